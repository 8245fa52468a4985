-- prosody-mam-native: XEP-0313 Message Archive Management with a native engine.
--
-- This file only wires Prosody's events to the engine (mamengine.lib.lua loads the
-- native library, opens the archive and hands results back; mammetrics.lib.lua
-- holds the metrics). Every decision (what to archive, preferences, queries,
-- expiry) is made in the native library; see README.md for the options, which are
-- stock mod_mam's.

local st = require "util.stanza";
local jid_split = require "util.jid".split;
local jid_bare = require "util.jid".bare;
local um = require "core.usermanager";
local rm_load_roster = require "core.rostermanager".load_roster;
local time_now = require "util.time".monotonic or require "util.time".now;

local xmlns_mam = "urn:xmpp:mam:2";
local xmlns_mam_ext = "urn:xmpp:mam:2#extended";
local xmlns_st_id = "urn:xmpp:sid:0";

local host = module.host;

local engine_lib = module:require "mamengine";
local native = engine_lib.load_native();

-- Under prosodyctl (`prosodyctl mod_mam <command>`) the module is loaded on "*" only
-- to run an admin command: no events, no archive of its own.
if host == "*" then
	module.command = module:require "mamcommands" (native);
	return;
end

module:log("info", "prosody-mam-native %s (native library %s)", native.version, native.library_path);

local host_events = prosody.hosts[host].events;

local engine = engine_lib.open(native);
local metrics = module:require "mammetrics";
engine.run(metrics);
local m_archived, m_skipped, m_queries, m_query_latency =
	metrics.archived, metrics.skipped, metrics.queries, metrics.query_latency;
local count_failure = metrics.count_failure;
local when_read = engine.when_read;

local fail, unavailable = engine.fail, engine.unavailable;

-- Preferences (XEP-0313 §6).
module:hook("iq/self/" .. xmlns_mam .. ":prefs", function (event)
	local origin, stanza = event.origin, event.stanza;
	if unavailable(origin, stanza) then return true; end
	local set = stanza.attr.type == "set" and stanza.tags[1] or nil;
	local prefs, err = engine.archive:prefs(origin.username, set);
	if not prefs then return fail(origin, stanza, "Setting preferences", err); end
	origin.send(st.reply(stanza):add_child(prefs));
	return true;
end);

-- The query form (XEP-0313 §4.1.5).
module:hook("iq-get/self/" .. xmlns_mam .. ":query", function (event)
	local origin, stanza = event.origin, event.stanza;
	if unavailable(origin, stanza) then return true; end
	local form, err = engine.archive:query_form(origin.username);
	if not form then return fail(origin, stanza, "Query form", err); end
	origin.send(st.reply(stanza):add_child(form));
	return true;
end);

-- Archive queries (XEP-0313 §4): validated at once, run on a reader thread.
module:hook("iq-set/self/" .. xmlns_mam .. ":query", function (event)
	local started = time_now();
	local origin, stanza = event.origin, event.stanza;
	origin.mam_requested = true;
	if unavailable(origin, stanza) then
		m_queries["internal-server-error"]:add(1);
		return true;
	end
	local job, err = engine.archive:query {
		user = origin.username;
		query = stanza.tags[1];
		-- st.reply's addressing for the results and the fin.
		to = stanza.attr.from;
		from = stanza.attr.to;
		iq_id = stanza.attr.id;
		serialised = engine.serialised_for(origin);
	};
	if not job then
		m_queries[err.condition or "internal-server-error"]:add(1);
		return fail(origin, stanza, "Archive query", err);
	end
	when_read(job, function (c)
		if c.err then
			m_queries[c.err.condition or "internal-server-error"]:add(1);
			return fail(origin, stanza, "Archive query", c.err);
		end
		engine.send_page(origin, c.page);
		m_queries.ok:add(1);
		m_query_latency:sample(time_now() - started);
	end);
	return true;
end);

-- Archive metadata (XEP-0313 §7).
module:hook("iq-get/self/" .. xmlns_mam .. ":metadata", function (event)
	local origin, stanza = event.origin, event.stanza;
	if unavailable(origin, stanza) then return true; end
	local job, err = engine.archive:metadata(origin.username);
	if not job then return fail(origin, stanza, "Archive metadata", err); end
	when_read(job, function (c)
		if c.err then return fail(origin, stanza, "Archive metadata", c.err); end
		origin.send(st.reply(stanza):add_child(c.metadata));
	end);
	return true;
end);

-- Stock's own veto at -1: other modules hooking archive-should-store run first.
module:hook("archive-should-store", function (event)
	local should, why = engine.archive:should_store(event.stanza);
	event.reason = why;
	return should;
end, -1);

local function has_in_roster(user, who)
	local roster = rm_load_roster(user, host);
	return roster and roster[who] ~= nil;
end

-- Online users certainly exist; only others cost an account lookup (stock asks
-- usermanager for every message, which reads the account file each time).
local host_sessions = prosody.hosts[host].sessions;
local function user_exists(user)
	return host_sessions[user] ~= nil or um.user_exists(user, host);
end

-- Sender's messages -> the <stanza-id> added to them, until it is taken off before
-- routing (weak keys: a message whose event stopped early does not stay here).
local senders_ids = setmetatable({}, { __mode = "k" });

-- The opening tag of a stanza for a log line, built only if the line is written:
-- Prosody formats a line only when a sink takes its level, and skipped messages
-- (chat states without a body, the most common ones) are logged at debug.
local lazy_top_tag_mt = { __tostring = function (self) return self[1]:top_tag(); end };
local function lazy_top_tag(stanza)
	return setmetatable({ stanza }, lazy_top_tag_mt);
end

-- append()'s options, built once, by [check][announce][wait]: archiving allocates
-- no table per message.
local append_options = {};
for _, check in ipairs { true, false } do
	append_options[check] = {};
	for _, announce in ipairs { true, false } do
		append_options[check][announce] = {
			[true] = { check = check; announce = announce; wait = true };
			[false] = { check = check; announce = announce };
		};
	end
end
local holds_delivery, await_commit, note_queued = engine.holds_delivery, engine.await_commit, engine.queued;

local function message_handler(event, c2s)
	local archive = engine.archive;
	if not archive then
		m_skipped["unavailable"]:add(1);
		return;
	end
	local origin, stanza = event.origin, event.stanza;
	local log = c2s and origin.log or module._log;
	local orig_from = stanza.attr.from;
	local orig_to = stanza.attr.to or orig_from;
	-- Whose archive, and who they are talking with (as addressed: bare or full).
	local store_user = c2s and origin.username or jid_split(orig_to);
	local with = c2s and orig_to or orig_from;
	if not store_user or not with then return; end

	-- Stanza-ids claiming to be from an archive on this host are forgeries: drop them
	-- before anything else sees, stores or delivers the message.
	local stripped = archive:strip_forged_ids(stanza);
	if stripped then
		stanza = stripped;
		event.stanza = stripped;
	end

	-- Other modules may veto through archive-should-store (stock's own rules answer
	-- at -1). When nobody else listens, the engine applies those rules itself in the
	-- append call below, saving a conversion of the stanza.
	local vetoers = host_events.get_handlers("archive-should-store");
	local check_in_append = vetoers == nil or #vetoers <= 1;
	local payload;
	if not check_in_append then
		payload = { stanza = stanza; session = origin };
		if not module:fire_event("archive-should-store", payload) then
			log("debug", "Not archiving stanza: %s (%s)", lazy_top_tag(stanza), payload.reason);
			m_skipped[payload.reason or "vetoed"]:add(1);
			return;
		end
	end

	local rule, rule_err = archive:rule(store_user, with);
	if not rule then
		log("error", "Could not read archiving preferences of %s: %s", store_user, rule_err.log);
		m_skipped.error:add(1);
		return;
	end
	if rule == "roster" then
		rule = has_in_roster(store_user, jid_bare(with)) and "store" or "skip";
	end
	if rule ~= "store" then
		log("debug", "Not archiving stanza: %s (prefs)", lazy_top_tag(stanza));
		m_skipped.prefs:add(1);
		return;
	end
	if not user_exists(store_user) then
		log("debug", "Not archiving stanza: %s (no such user)", lazy_top_tag(stanza));
		m_skipped["no user"]:add(1);
		return;
	end

	-- Building the stored copy for listeners costs time: only when someone listens.
	local announce = host_events.get_handlers("archive-message-added") ~= nil;
	-- The stanza-id goes onto the stanza itself (no copy: copies were most of the
	-- garbage this module made, and Prosody's collector is where its time goes under
	-- load). The sender's is taken off again before routing, below.
	-- With mam_commit_before_delivery the writer commits this at once and reports it,
	-- and no session is sent anything after it until then (mamengine's output
	-- barrier): what a client is given is in the archive whatever happens next.
	local wait = engine.config.commit_before_delivery;
	local id, stanza_id, stored, seq, committed = archive:append(store_user, with, stanza,
		append_options[check_in_append][announce][wait]);
	if not id then
		local err = stanza_id;
		if err.reason then
			log("debug", "Not archiving stanza: %s (%s)", lazy_top_tag(stanza), err.log);
			m_skipped[err.reason]:add(1);
		else
			log("error", "Could not archive stanza: %s", err.log);
			count_failure(err);
		end
		return;
	end
	m_archived:add(1);
	log("debug", "Archived message %s as %s", stanza.attr.id, id);
	if wait then
		note_queued(seq, committed);
	end
	if c2s then
		senders_ids[stanza] = stanza_id;
	end
	if announce then
		-- Listeners (push notifications) tell clients about the message outside any
		-- session's output: committed first, where the stanza's runner can wait.
		if holds_delivery() then
			await_commit(seq, origin);
		end
		module:fire_event("archive-message-added", { origin = origin, stanza = stored, for_user = store_user, id = id });
	end
end

local function c2s_message_handler(event)
	return message_handler(event, true);
end

-- Offline storage is not a session's output: a message stored for later is
-- committed first, where the stanza's runner can wait (mod_offline stores at 0).
module:hook("message/offline/handle", function (event)
	if engine.archive and holds_delivery() then
		local pending = engine.pending_seq();
		if pending then
			await_commit(pending, event.origin);
		end
	end
end, 1);

-- The sender's stanza-id (added above at priority 0) is for their carbons (-0.5) only:
-- strip stanza-ids naming our accounts before the message is routed (stock's -1).
-- Ours is taken off the stanza it was put on (the last child, unless someone added
-- after it); any other goes with a copy.
local function strip_outgoing_stanza_id(event)
	local archive = engine.archive;
	if not archive then return; end
	local stanza = event.stanza;
	local ours = senders_ids[stanza];
	if ours then
		senders_ids[stanza] = nil;
		local n, tags = #stanza, stanza.tags;
		local ntags = #tags;
		if stanza[n] == ours and tags[ntags] == ours then
			stanza[n], tags[ntags] = nil, nil;
		end
	end
	local stripped = archive:strip_forged_ids(stanza);
	if stripped then
		event.stanza = stripped;
	end
end
module:hook("pre-message/bare", strip_outgoing_stanza_id, -1);
module:hook("pre-message/full", strip_outgoing_stanza_id, -1);

-- Archived messages that mod_offline did not take are not lost: no bounce.
module:hook("message/offline/handle", function (event)
	local user = event.username .. "@" .. host;
	if event.stanza:get_child_with_attr("stanza-id", xmlns_st_id, "by", user) then
		return true;
	end
end, -2);

-- A client that queried the archive fetches history itself: no offline flood.
module:hook("message/offline/broadcast", function (event)
	if event.origin.mam_requested then
		return true;
	end
end);

module:hook("pre-message/bare", c2s_message_handler, 0);
module:hook("pre-message/full", c2s_message_handler, 0);
module:hook("message/bare", message_handler, 0);
module:hook("message/full", message_handler, 0);

module:hook("account-disco-info", function (event)
	local reply = event.reply or event.stanza;
	reply:tag("feature", { var = xmlns_mam }):up();
	reply:tag("feature", { var = xmlns_mam_ext }):up();
	reply:tag("feature", { var = xmlns_st_id }):up();
end);

-- Account deletion takes the archive and preferences with it.
module:hook_global("user-deleted", function (event)
	if event.host ~= host then return; end
	local username = event.username;
	local archive = engine.archive;
	if not archive then
		module:log("error", "Could not delete archive of %s@%s: the archive database is unavailable", username, host);
		return;
	end
	local job, err = archive:delete_user(username);
	if not job then
		module:log("error", "Could not delete archive of %s@%s: %s", username, host, err.log);
		return;
	end
	engine.on_done(job, function (c)
		if c.err then
			module:log("error", "Could not delete archive of %s@%s: %s", username, host, c.err.log);
		else
			module:log("info", "Deleted archive of %s@%s (%d messages)", username, host, c.count);
		end
	end);
end);

module:hook_global("server-stopped", engine.close);

function module.unload()
	engine.close();
end
