-- prosody-mam-native: room archives (XEP-0313 on a MUC component) on the native engine.
--
-- This file only wires Prosody's MUC events to the engine that mod_mam uses too
-- (mamengine.lib.lua and mammetrics.lib.lua, installed beside this file by `make
-- plugin` and the packages; the native library is the same file). Options are stock
-- mod_muc_mam's; docs/room-archives.md says what differs from stock and why.

local st = require "util.stanza";
local jid_split = require "util.jid".split;
local jid_bare = require "util.jid".bare;
local jid_prep = require "util.jid".prep;
local jid_host = require "util.jid".host;
local datetime = require "util.datetime";
local async = require "util.async";
local time_now = require "util.time".monotonic or require "util.time".now;

local xmlns_mam = "urn:xmpp:mam:2";
local xmlns_mam_ext = "urn:xmpp:mam:2#extended";
local xmlns_st_id = "urn:xmpp:sid:0";
local xmlns_muc_user = "http://jabber.org/protocol/muc#user";
local xmlns_delay = "urn:xmpp:delay";

local host = module.host;

local engine_lib = module:require "mamengine";
local native = engine_lib.load_native();

-- Under prosodyctl (`prosodyctl mod_muc_mam <command>`) the module is loaded on "*"
-- only to run an admin command: no events, no archive of its own.
if host == "*" then
	module.command = module:require "mamcommands" (native, { owners = "rooms" });
	return;
end

if module:get_host_type() ~= "component" then
	error("mod_muc_mam: load it on a MUC component (Component \"rooms.example.com\" \"muc\"), not on " .. host);
end

local log_all_rooms = module:get_option_boolean("muc_log_all_rooms", false);
local log_by_default = module:get_option_boolean("muc_log_by_default", true);
local log_presences = module:get_option_boolean("muc_log_presences", false);

local mod_muc = module:depends "muc";
local get_room_from_jid = rawget(mod_muc, "get_room_from_jid") or function (room_jid)
	local rooms = rawget(mod_muc, "rooms");
	return rooms and rooms[room_jid];
end;

module:log("info", "prosody-mam-native %s room archives (native library %s)", native.version, native.library_path);

local engine = engine_lib.open(native, { owners = "rooms" });
local metrics = module:require "mammetrics";
engine.run(metrics);
local m_archived, m_skipped, m_queries, m_query_latency =
	metrics.archived, metrics.skipped, metrics.queries, metrics.query_latency;
local count_failure = metrics.count_failure;
local fail, unavailable, when_read = engine.fail, engine.unavailable, engine.when_read;
local note_queued = engine.queued;

-- Whether a room archives its messages: muc_log_all_rooms, else the owners' choice
-- (stock's room field, kept in the room's own data so it survives a switch between
-- stock and this module), else muc_log_by_default.
local function archiving_enabled(room)
	if log_all_rooms then return true; end
	local enabled = room._data.archiving;
	if enabled == nil then return log_by_default; end
	return enabled;
end

if not log_all_rooms then
	module:hook("muc-config-form", function (event)
		table.insert(event.form, {
			name = "muc#roomconfig_enablearchiving";
			type = "boolean";
			label = "Archive chat on server";
			value = archiving_enabled(event.room);
		});
	end);

	-- Status 170/171 (XEP-0045 §10.2.1) only when the setting really changes.
	module:hook("muc-config-submitted/muc#roomconfig_enablearchiving", function (event)
		local enabled = not not event.value;
		if enabled == archiving_enabled(event.room) then return; end
		event.room._data.archiving = enabled;
		event.status_codes[enabled and "170" or "171"] = true;
	end);
end

-- The room's own JID part of an archive: the node of its JID (the service's own JID,
-- which has none, keeps no archive).
local function room_node(room)
	return (jid_split(room.jid));
end

-- Stanza-ids that claim to come from an archive on this service, and a sender's own
-- <x xmlns='…muc#user'> (where the room alone says who someone is), are forgeries:
-- they are taken out of an occupant's message before anyone sees, stores or gets it.
local function is_forged(tag)
	if tag.name == "stanza-id" and tag.attr.xmlns == xmlns_st_id then
		local by = tag.attr.by and jid_prep(tag.attr.by);
		return not by or jid_host(by) == host;
	end
	return tag.name == "x" and tag.attr.xmlns == xmlns_muc_user;
end
local function strip_forged(stanza)
	stanza:maptags(function (tag)
		if is_forged(tag) then return nil; end
		return tag;
	end);
end
module:hook("muc-occupant-groupchat", function (event)
	strip_forged(event.stanza);
end, 1);

-- Stanza-ids on what the room broadcasts of its own (a subject change by the room):
-- ids claiming this service are not ours to keep.
module:hook("muc-broadcast-message", function (event)
	event.stanza:maptags(function (tag)
		if tag.name == "stanza-id" and tag.attr.xmlns == xmlns_st_id and is_forged(tag) then return nil; end
		return tag;
	end);
end, 2);

-- append()'s options, built once.
local append_options = { [true] = { wait = true }; [false] = {} };

-- Archives a message the room is broadcasting and puts its <stanza-id> on it, so
-- every occupant's copy and the room's in-memory history carry the archive id.
local function archive_message(room, stanza)
	if not archiving_enabled(room) then return; end
	local archive = engine.archive;
	if not archive then
		m_skipped["unavailable"]:add(1);
		return;
	end
	local node = room_node(room);
	if not node then return; end
	-- The copy kept: the message as broadcast, without the room as its recipient,
	-- plus, in a room that shows real JIDs to everyone, who sent it (as stock keeps
	-- it; queries and history show it only while the room still does).
	local stored = st.clone(stanza);
	stored.attr.to = nil;
	if room:get_whois() == "anyone" then
		local occupant = room:get_occupant_by_nick(stanza.attr.from);
		if occupant then
			local actor = occupant.bare_jid or jid_bare(occupant.jid);
			local affiliation = room:get_affiliation(actor) or "none";
			stored:tag("x", { xmlns = xmlns_muc_user })
				:tag("item", { affiliation = affiliation; role = occupant.role or "none"; jid = actor }):up():up();
		end
	end
	local wait = engine.config.commit_before_delivery;
	local id, stanza_id, _, seq, committed = archive:append(node, stanza.attr.from or room.jid, stored, append_options[wait]);
	if not id then
		local err = stanza_id;
		if err.reason then
			module:log("debug", "Not archiving %s in %s: %s", stanza:top_tag(), room.jid, err.log);
			m_skipped[err.reason]:add(1);
		else
			module:log("error", "Could not archive a message in %s: %s", room.jid, err.log);
			count_failure(err);
		end
		return;
	end
	m_archived:add(1);
	-- What occupants receive waits for the commit (mamengine's output barrier).
	if wait then note_queued(seq, committed); end
	stanza:add_direct_child(stanza_id);
end

-- What the room keeps in its history (muc-message-is-historic said so) is archived.
module:hook("muc-add-history", function (event)
	archive_message(event.room, event.stanza);
end, 0);

-- A subject change is no history message (its body-less broadcast never reaches
-- muc-add-history), but it is part of the room's record: archived too.
module:hook("muc-broadcast-message", function (event)
	local stanza = event.stanza;
	if stanza:get_child("subject") and not stanza:get_child("body") then
		archive_message(event.room, stanza);
	end
end, 0.5);

-- muc_log_presences: joins and leaves are archived as stock archives them (a
-- presence from the occupant's nick, no real JID), beside the room's messages. No
-- query or join history returns them (stock's neither); the storage provider does,
-- to modules that read a room's log (docs/room-archives.md).
local function archive_presence(room, nick, left)
	if not archiving_enabled(room) then return; end
	local archive, node = engine.archive, room_node(room);
	if not node then return; end
	if not archive then
		m_skipped["unavailable"]:add(1);
		return;
	end
	local ok, err = archive:append_presence(node, nick, left);
	if not ok then
		module:log("error", "Could not archive a presence in %s: %s", room.jid, err.log);
		count_failure(err);
	end
end

if log_presences then
	module:hook("muc-occupant-joined", function (event)
		archive_presence(event.room, event.nick, false);
	end);
	module:hook("muc-occupant-left", function (event)
		archive_presence(event.room, event.nick, true);
	end);
end

local function is_subject_change(stanza)
	return stanza:get_child("subject") ~= nil and stanza:get_child("body") == nil;
end

-- Who may read a room's archive: not outcasts; in members-only rooms, members; in
-- hidden rooms, members and present occupants.
local function may_read(room, requester)
	local affiliation = room:get_affiliation(jid_bare(requester));
	if affiliation == "outcast" then return false; end
	if affiliation and affiliation ~= "none" then return true; end
	if room:get_members_only() then return false; end
	if room:get_hidden() and not room:get_occupant_jid(requester) then return false; end
	return true;
end

-- Whether `requester` may see the senders' real JIDs the archive kept: everyone in a
-- non-anonymous room, moderators (owners, admins) in a semi-anonymous one.
local function sees_real_jids(room, requester)
	if room:get_whois() == "anyone" then return true; end
	local affiliation = room:get_affiliation(jid_bare(requester));
	if affiliation == "owner" or affiliation == "admin" then return true; end
	local nick = room:get_occupant_jid(requester);
	local occupant = nick and room:get_occupant_by_nick(nick);
	return occupant ~= nil and occupant.role == "moderator";
end

-- The room an archive request is for; or nil and the condition of the error reply
-- already sent.
local function room_for(origin, stanza)
	local room = get_room_from_jid(jid_bare(stanza.attr.to));
	if not room or not room_node(room) then
		origin.send(st.error_reply(stanza, "cancel", "item-not-found", "No such room"));
		return nil, "item-not-found";
	end
	if not may_read(room, stanza.attr.from) then
		origin.send(st.error_reply(stanza, "auth", "forbidden", "You may not read this room's archive"));
		return nil, "forbidden";
	end
	if unavailable(origin, stanza) then return nil, "internal-server-error"; end
	return room;
end

-- The query form (XEP-0313 §4.1.5).
module:hook("iq-get/bare/" .. xmlns_mam .. ":query", function (event)
	local origin, stanza = event.origin, event.stanza;
	local room = room_for(origin, stanza);
	if not room then return true; end
	local form, err = engine.archive:query_form(room_node(room));
	if not form then return fail(origin, stanza, "Query form", err); end
	origin.send(st.reply(stanza):add_child(form));
	return true;
end);

-- Queries (XEP-0313 §4): validated at once, run on a reader thread.
module:hook("iq-set/bare/" .. xmlns_mam .. ":query", function (event)
	local started = time_now();
	local origin, stanza = event.origin, event.stanza;
	local room, refused = room_for(origin, stanza);
	if not room then
		m_queries[refused]:add(1);
		return true;
	end
	local job, err = engine.archive:query {
		user = room_node(room);
		query = stanza.tags[1];
		to = stanza.attr.from;
		from = stanza.attr.to;
		iq_id = stanza.attr.id;
		serialised = engine.serialised_for(origin);
		hide_real_jids = not sees_real_jids(room, stanza.attr.from);
	};
	if not job then
		m_queries[err.condition or "internal-server-error"]:add(1);
		return fail(origin, stanza, "Room archive query", err);
	end
	when_read(job, function (c)
		if c.err then
			m_queries[c.err.condition or "internal-server-error"]:add(1);
			return fail(origin, stanza, "Room archive query", c.err);
		end
		engine.send_page(origin, c.page);
		m_queries.ok:add(1);
		m_query_latency:sample(time_now() - started);
	end);
	return true;
end);

-- Archive metadata (XEP-0313 §7), which stock advertises and never answers.
module:hook("iq-get/bare/" .. xmlns_mam .. ":metadata", function (event)
	local origin, stanza = event.origin, event.stanza;
	local room = room_for(origin, stanza);
	if not room then return true; end
	local job, err = engine.archive:metadata(room_node(room));
	if not job then return fail(origin, stanza, "Room archive metadata", err); end
	when_read(job, function (c)
		if c.err then return fail(origin, stanza, "Room archive metadata", c.err); end
		origin.send(st.reply(stanza):add_child(c.metadata));
	end);
	return true;
end);

-- Extra archived messages join history reads, for the subject changes it skips.
local history_slack = 10;

-- Join history (XEP-0045 §7.2.15) from the archive, where the joining session's
-- runner can wait for it; elsewhere, and when the room's memory already holds
-- enough, the in-memory history (history.lib, at -1) answers as it does without us.
module:hook("muc-get-history", function (event)
	local room = event.room;
	local archive = engine.archive;
	if not archive or not archiving_enabled(room) then return; end
	local maxstanzas, maxchars = event.maxstanzas, event.maxchars;
	if maxstanzas == 0 or maxchars == 0 then return; end
	local length = room:get_historylength();
	if not maxstanzas or maxstanzas > length then maxstanzas = length; end
	local in_memory = room._history;
	if in_memory and #in_memory >= maxstanzas then return; end
	if not async.ready() then return; end
	local node = room_node(room);
	if not node then return; end
	-- A few more than asked: subject changes are archived, and skipped here (the
	-- joiner gets the current subject right after the history).
	local job, err = archive:history(node, { limit = maxstanzas + history_slack; since = event.since });
	if not job then
		module:log("error", "Could not read the history of %s: %s", room.jid, err.log);
		return;
	end
	local items;
	when_read(job, function (c)
		if c.err then
			module:log("error", "Could not read the history of %s: %s", room.jid, c.err.log);
			return;
		end
		items = c.items;
	end);
	if not items then return; end
	local to, room_jid = event.to, room.jid;
	local show_jids = room:get_whois() == "anyone";
	local history, chars = {}, 0;
	for i = 1, #items do -- newest first
		if #history >= maxstanzas then break; end
		local item = items[i];
		local stanza = item.stanza;
		if not is_subject_change(stanza) then
			stanza.attr.to = to;
			stanza.attr.xmlns = nil;
			if not show_jids then stanza:remove_children("x", xmlns_muc_user); end
			stanza:tag("delay", { xmlns = xmlns_delay; from = room_jid; stamp = datetime.datetime(math.floor(item.when)) }):up();
			stanza:tag("stanza-id", { xmlns = xmlns_st_id; by = room_jid; id = item.id }):up();
			if maxchars then
				chars = chars + #tostring(stanza);
				if chars > maxchars then break; end
			end
			history[#history + 1] = stanza;
		end
	end
	local i = #history + 1;
	event.next_stanza = function ()
		i = i - 1;
		return history[i];
	end;
	return true;
end, 1);

-- A destroyed room takes its archive with it.
module:hook("muc-room-destroyed", function (event)
	local room = event.room;
	local node = room_node(room);
	local archive = engine.archive;
	if not node then return; end
	if not archive then
		module:log("error", "Could not delete the archive of %s: the archive database is unavailable", room.jid);
		return;
	end
	local job, err = archive:delete_user(node);
	if not job then
		module:log("error", "Could not delete the archive of %s: %s", room.jid, err.log);
		return;
	end
	engine.on_done(job, function (c)
		if c.err then
			module:log("error", "Could not delete the archive of %s: %s", room.jid, c.err.log);
		else
			module:log("debug", "Deleted the archive of %s (%d messages)", room.jid, c.count);
		end
	end);
end);

module:hook("muc-disco#info", function (event)
	local reply = event.reply;
	if archiving_enabled(event.room) then
		reply:tag("feature", { var = xmlns_mam }):up();
		reply:tag("feature", { var = xmlns_mam_ext }):up();
	end
	reply:tag("feature", { var = xmlns_st_id }):up();
end);

module:hook_global("server-stopped", engine.close);

function module.unload()
	engine.close();
end
