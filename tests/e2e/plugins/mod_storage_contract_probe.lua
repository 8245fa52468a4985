-- Test-only: Prosody's archive store API, driven through Prosody's own storage
-- manager (module:open_store) against whatever driver the config names for the
-- stores, checked sentence by sentence. tests/e2e/test_storage_provider.py asks for
-- a run with an iq to the host:
--
--   <run xmlns='urn:xmpp:e2e:storage-contract' mode='runner|loop' prefix='…'/>
--     mode runner: in the iq's async runner; loop: from a timer, outside any runner
--     (how stock mod_muc_mam calls find on some joins).
--   -> <result passed='n' failed='m'><failure>…</failure>…</result>
--
--   <find xmlns='…' user='…' with='…'/>  -> <items><item key= with= when=>body</item>…
--   <append xmlns='…' user='…' with='…' body='…'/> -> <appended key='…'/>

local st = require "util.stanza";
local async = require "util.async";

local xmlns = "urn:xmpp:e2e:storage-contract";
local room_host = module:get_option_string("contract_room_host", "rooms.localhost");
local quota = module:get_option_number("storage_archive_item_limit");

local personal = module:open_store("archive", "archive");
local rooms; -- opened at the first run: the component is not up while this loads

-- A time as an integer when it is one (13 gives floats: 1001.0), for messages.
local function int(x)
	return math.tointeger(x) or x;
end

local function message(body, from)
	return st.message({ type = "chat", from = from or "romeo@montague.lit/orchard", to = "juliet@localhost" })
		:text_tag("body", body);
end

local function collect(iter)
	local out = {};
	for key, stanza, when, with in iter do
		out[#out + 1] = { key = key; stanza = stanza; when = when; with = with };
	end
	return out;
end

local function keys(items)
	local out = {};
	for i, item in ipairs(items) do out[i] = item.key; end
	return table.concat(out, ",");
end

local function run_contract(prefix)
	rooms = rooms or module:context(room_host):open_store("muc_log", "archive");
	local passed, failures = 0, {};
	local function check(name, ok, detail)
		if ok then
			passed = passed + 1;
		else
			failures[#failures + 1] = name .. (detail and (": " .. tostring(detail)) or "");
		end
	end
	local function eq(name, got, want)
		check(name, got == want, ("got %s, want %s"):format(tostring(got), tostring(want)));
	end
	local function find(store, user, query)
		local iter, total = store:find(user, query);
		if not iter then return nil, total; end
		return collect(iter), total;
	end

	-- caps, as the stock drivers declare them.
	local caps = personal.caps or {};
	for _, cap in ipairs({ "total", "truncate", "full_id_range", "ids", "wildcard_delete" }) do
		eq("caps." .. cap, caps[cap], true);
	end
	eq("caps.quota is storage_archive_item_limit", caps.quota, quota);

	-- append: keys, times, with; find gives them back.
	local pa = prefix .. "pa";
	local k = {};
	local withs = { "romeo@montague.lit", "nurse@capulet.lit/chamber", "romeo@montague.lit",
		"nurse@capulet.lit/chamber", "romeo@montague.lit" };
	for i = 1, 5 do
		local key, err = personal:append(pa, nil, message("m" .. i), 1000 + i, withs[i]);
		check("append returns a key", type(key) == "string", err);
		k[i] = key;
	end
	local all = find(personal, pa, nil) or {};
	eq("find with no query returns every item", keys(all), table.concat(k, ","));
	local first = all[1] or {};
	check("items are util.stanza stanzas", st.is_stanza(first.stanza));
	eq("an item's stanza is what was appended", first.stanza and first.stanza:get_child_text("body"), "m1");
	eq("an item's when is what was appended", first.when, 1001);
	eq("an item's with is what was appended", first.with, "romeo@montague.lit");
	eq("a full JID with comes back bare", (all[2] or {}).with, "nurse@capulet.lit");

	-- find: every query field.
	eq("limit", keys(find(personal, pa, { limit = 2 }) or {}), k[1] .. "," .. k[2]);
	eq("reverse gives the newest first", keys(find(personal, pa, { limit = 2; reverse = true }) or {}), k[5] .. "," .. k[4]);
	eq("start and end are inclusive", keys(find(personal, pa, { start = 1002; ["end"] = 1004 }) or {}),
		k[2] .. "," .. k[3] .. "," .. k[4]);
	eq("with a bare JID", keys(find(personal, pa, { with = "romeo@montague.lit" }) or {}), k[1] .. "," .. k[3] .. "," .. k[5]);
	eq("with a bare JID matches full-JID items", keys(find(personal, pa, { with = "nurse@capulet.lit" }) or {}), k[2] .. "," .. k[4]);
	eq("after", keys(find(personal, pa, { after = k[3] }) or {}), k[4] .. "," .. k[5]);
	eq("before", keys(find(personal, pa, { before = k[3] }) or {}), k[1] .. "," .. k[2]);
	eq("after and before", keys(find(personal, pa, { after = k[1]; before = k[4] }) or {}), k[2] .. "," .. k[3]);
	eq("reverse before pages backwards", keys(find(personal, pa, { before = k[5]; reverse = true; limit = 2 }) or {}),
		k[4] .. "," .. k[3]);
	eq("ids", keys(find(personal, pa, { ids = { k[4], k[2] } }) or {}), k[2] .. "," .. k[4]);
	local items, err = find(personal, pa, { after = "no-such-id" });
	check("unknown after is item-not-found", items == nil and err == "item-not-found", err);
	items, err = find(personal, pa, { before = "no-such-id" });
	check("unknown before is item-not-found", items == nil and err == "item-not-found", err);
	items, err = find(personal, pa, { ids = { k[1], "no-such-id" } });
	check("an unknown id is item-not-found", items == nil and err == "item-not-found", err);
	local total;
	items, total = find(personal, pa, { limit = 1; total = true });
	eq("total counts every match", total, 5);
	eq("total with limit returns the page", items and #items, 1);
	items, total = find(personal, pa, { limit = 0; total = true });
	eq("limit 0 counts only", (items and #items or -1) .. "/" .. tostring(total), "0/5");
	items, total = find(personal, pa, { with = "romeo@montague.lit"; total = true; after = k[1] });
	eq("total ignores after", total, 3);
	items, total = find(personal, pa, { limit = 1 });
	eq("no total unless asked", total, nil);
	items, total = find(personal, prefix .. "nobody", { total = true });
	eq("an empty archive has total 0", (items and #items or -1) .. "/" .. tostring(total), "0/0");
	items, err = find(personal, prefix .. "nobody", { after = "x" });
	check("after on an empty archive is item-not-found", items == nil and err == "item-not-found", err);

	-- get and set (a moderation module's tombstone).
	local stanza, when, with = personal:get(pa, k[3]);
	eq("get returns the stanza", stanza and stanza:get_child_text("body"), "m3");
	eq("get returns when and with", tostring(int(when)) .. " " .. tostring(with), "1003 romeo@montague.lit");
	stanza, err = personal:get(pa, "no-such-id");
	check("get of an unknown key is item-not-found", stanza == nil and err == "item-not-found", err);
	local tombstone = st.message({ type = "chat" }):tag("retracted", { xmlns = "urn:xmpp:message-retract:1" });
	local ok;
	ok, err = personal:set(pa, k[3], tombstone);
	check("set replaces the stanza", ok == true, err);
	stanza, when, with = personal:get(pa, k[3]);
	check("set keeps when and with", when == 1003 and with == "romeo@montague.lit", tostring(when) .. " " .. tostring(with));
	check("the tombstone is stored", stanza and stanza:get_child("retracted", "urn:xmpp:message-retract:1") ~= nil,
		stanza and tostring(stanza));
	check("the old body is gone", stanza and stanza:get_child_text("body") == nil);
	ok, err = personal:set(pa, k[3], nil, 1500, "friar@verona.lit");
	stanza, when, with = personal:get(pa, k[3]);
	check("set changes when and with", ok and when == 1500 and with == "friar@verona.lit",
		tostring(when) .. " " .. tostring(with) .. " " .. tostring(err));
	eq("a later when moves the item", keys(find(personal, pa, { reverse = true; limit = 1 }) or {}), k[3]);
	ok, err = personal:set(pa, "no-such-id", tombstone);
	check("set of an unknown key is item-not-found", ok == nil and err == "item-not-found", err);
	ok, err = personal:set(pa, k[1], "not a stanza");
	check("set of a non-stanza is unsupported-datatype", ok == nil and err == "unsupported-datatype", err);

	-- append with a key replaces (prosody-migrator keeps ids).
	local key2 = personal:append(pa, k[2], message("m2 again"), 1002, "nurse@capulet.lit");
	eq("append with an existing key returns it", key2, k[2]);
	eq("append with an existing key replaces the item", #(find(personal, pa, nil) or {}), 5);
	eq("the replacement is stored", (personal:get(pa, k[2])) and personal:get(pa, k[2]):get_child_text("body"), "m2 again");
	eq("append with a new key keeps it", personal:append(prefix .. "pb", "my-own-key", message("x"), 2000, "a@b"), "my-own-key");
	local key, aerr = personal:append(prefix .. "pb", nil, "plain text", 2001, "a@b");
	check("append of a non-stanza is unsupported-datatype", key == nil and aerr == "unsupported-datatype", aerr);
	eq("append without when stamps now", math.abs(((find(personal, prefix .. "pb", { key = personal:append(prefix .. "pb", nil, message("now"), nil, "a@b") }) or {})[1] or { when = 0 }).when - os.time()) < 30, true);

	-- summary and users.
	local summary = personal:summary(pa) or { counts = {}; earliest = {}; latest = {} };
	eq("summary counts by with", tostring(summary.counts["romeo@montague.lit"]) .. "/" .. tostring(summary.counts["nurse@capulet.lit"]) .. "/" .. tostring(summary.counts["friar@verona.lit"]), "2/2/1");
	eq("summary earliest and latest", tostring(int(summary.earliest["romeo@montague.lit"])) .. "-" .. tostring(int(summary.latest["romeo@montague.lit"])), "1001-1005");
	local users = {};
	for user in personal:users() do users[user] = true; end
	check("users lists owners with items", users[pa] and users[prefix .. "pb"], "users()");

	-- host data (username nil).
	eq("append for the host (nil username)", type(personal:append(nil, nil, message("host"), 3000, "")), "string");
	eq("find for the host", #(find(personal, nil, nil) or {}) >= 1, true);

	-- quota.
	if quota then
		local pq = prefix .. "pq";
		for i = 1, quota do personal:append(pq, nil, message("q" .. i), 4000 + i, "a@b"); end
		key, aerr = personal:append(pq, nil, message("over"), 5000, "a@b");
		check("past storage_archive_item_limit is quota-limit", key == nil and aerr == "quota-limit", aerr);
	end

	-- delete: every query field.
	local function fill(user, n)
		local out = {};
		for i = 1, n do
			out[i] = personal:append(user, nil, message("d" .. i), 6000 + i, i % 2 == 0 and "nurse@capulet.lit" or "romeo@montague.lit");
		end
		return out;
	end
	local pd = prefix .. "pd";
	local d = fill(pd, 6);
	eq("delete by ids", personal:delete(pd, { ids = { d[1] } }), 1);
	eq("delete by with", personal:delete(pd, { with = "nurse@capulet.lit" }), 3);
	eq("what is left", keys(find(personal, pd, nil) or {}), d[3] .. "," .. d[5]);
	personal:delete(pd);
	d = fill(pd, 6);
	eq("delete by start and end", personal:delete(pd, { start = 6002; ["end"] = 6003 }), 2);
	eq("delete by end", personal:delete(pd, { ["end"] = 6001 }), 1);
	eq("delete after", personal:delete(pd, { after = d[5] }), 1);
	eq("delete before", personal:delete(pd, { before = d[5] }), 1);
	eq("what is left after the deletes", keys(find(personal, pd, nil) or {}), d[5]);
	local n, derr = personal:delete(pd, { after = "no-such-id" });
	check("delete after an unknown id is item-not-found", n == nil and derr == "item-not-found", derr);
	local pt = prefix .. "pt";
	local t = fill(pt, 5);
	eq("truncate keeps the newest n", personal:delete(pt, { truncate = 2 }), 3);
	eq("the newest are kept", keys(find(personal, pt, nil) or {}), t[4] .. "," .. t[5]);
	t = fill(pt, 3);
	eq("truncate with reverse keeps the oldest n", personal:delete(pt, { truncate = 1; reverse = true }), 4);
	eq("the oldest is kept", keys(find(personal, pt, nil) or {}), t[1]);
	eq("delete with no query removes everything of that user", personal:delete(pt) >= 1, true);
	eq("nothing is left", #(find(personal, pt, nil) or { 1 }), 0);
	fill(pt, 2);
	eq("delete with an empty query removes everything too", personal:delete(pt, {}), 2);
	local pw1, pw2 = prefix .. "pw1", prefix .. "pw2";
	fill(pw1, 2); fill(pw2, 3);
	n = personal:delete(true, { ["end"] = 6002 });
	check("a wildcard delete reaches every user", n and n >= 4, n);
	eq("a wildcard delete leaves newer items", #(find(personal, pw2, nil) or {}), 1);

	-- The room store: stock mod_muc_mam's with, our rows.
	local room = prefix .. "room";
	local room_jid = room .. "@" .. room_host;
	local gc = st.message({ type = "groupchat", from = room_jid .. "/nick1", to = room_jid }):text_tag("body", "hello room");
	local rk = rooms:append(room, nil, gc, 7001, "message<groupchat");
	check("a room message is stored", type(rk) == "string", rk);
	local gc2 = st.message({ type = "groupchat", from = room_jid .. "/nick2" }):text_tag("body", "second");
	rooms:append(room, nil, gc2, 7002, "message<groupchat");
	-- Joins and leaves (stock's muc_log_presences): kept beside the messages.
	local pj = rooms:append(room, nil, st.presence({ from = room_jid .. "/nick1" })
		:tag("x", { xmlns = "http://jabber.org/protocol/muc" }):up(), 7003, "presence");
	check("a room join is stored", type(pj) == "string", pj);
	local pl = rooms:append(room, nil, st.presence({ type = "unavailable"; from = room_jid .. "/nick1" }), 7002);
	check("a room leave is stored, its with taken from its type as stock takes it", type(pl) == "string", pl);
	key, aerr = rooms:append(room, nil, st.presence({ type = "error"; from = room_jid .. "/nick1" }), 7004);
	check("a presence that is neither join nor leave is unsupported-datatype",
		key == nil and aerr == "unsupported-datatype", aerr);
	key, aerr = rooms:append(room, nil, st.iq({ type = "get"; id = "x" }), 7004);
	check("an iq is unsupported-datatype", key == nil and aerr == "unsupported-datatype", aerr);
	local joins = find(rooms, room, { with = "presence" }) or {};
	eq("with presence finds the joins", keys(joins), pj);
	eq("a join carries with presence", (joins[1] or {}).with, "presence");
	check("a join keeps its muc <x>", joins[1] and joins[1].stanza:get_child("x", "http://jabber.org/protocol/muc") ~= nil);
	eq("with presence<unavailable finds the leaves", keys(find(rooms, room, { with = "presence<unavailable" }) or {}), pl);
	local all = find(rooms, room, nil) or {};
	local withs = {};
	for i, item in ipairs(all) do withs[i] = item.with; end
	eq("no with reads messages and presences in time order (a message first at the same second)",
		table.concat(withs, ","), "message<groupchat,message<groupchat,presence<unavailable,presence");
	local newest, ntotal = find(rooms, room, { reverse = true; limit = 2; total = true });
	eq("the newest two of both, newest first", keys(newest or {}), pj .. "," .. pl);
	eq("the total counts both", ntotal, 4);
	eq("after a message, the presences after it", keys(find(rooms, room, { after = rk }) or {}),
		keys({ all[2], all[3], all[4] }));
	eq("before a presence, what came before it", keys(find(rooms, room, { before = pl }) or {}),
		keys({ all[1], all[2] }));
	eq("ids across both", keys(find(rooms, room, { ids = { pj, rk } }) or {}), rk .. "," .. pj);
	local ritems = find(rooms, room, { with = "message<groupchat" }) or {};
	eq("message<groupchat finds every room message", #ritems, 2);
	eq("room items carry message<groupchat", (ritems[1] or {}).with, "message<groupchat");
	check("a room item has no to (as our mod_muc_mam stores it)", ritems[1] and ritems[1].stanza.attr.to == nil);
	eq("a room item keeps its from", ritems[1] and ritems[1].stanza.attr.from, room_jid .. "/nick1");
	eq("an occupant JID finds that occupant's messages", keys(find(rooms, room, { with = room_jid .. "/nick2" }) or {}),
		keys({ ritems[2] }));
	ok, err = rooms:set(room, rk, st.message({ type = "groupchat", from = room_jid .. "/nick1" })
		:tag("retracted", { xmlns = "urn:xmpp:message-retract:1" }));
	check("a room message can be replaced by a tombstone", ok == true, err);
	local rs, rwhen, rwith = rooms:get(room, rk);
	check("the room tombstone keeps when and with", rs and rwhen == 7001 and rwith == "message<groupchat",
		tostring(rwhen) .. " " .. tostring(rwith));
	local summary = rooms:summary(room) or {};
	eq("the room store's summary", (summary.counts or {})["message<groupchat"], 2);
	eq("the summary counts joins", (summary.counts or {})["presence"], 1);
	local listed = 0;
	for user in (rooms:users() or function () end) do
		if user == room then listed = listed + 1; end
	end
	eq("users lists a room with presences once", listed, 1);
	eq("delete with presence<unavailable takes the leaves only", rooms:delete(room, { with = "presence<unavailable" }), 1);
	eq("a destroyed room's archive goes (delete with no query), its joins too", rooms:delete(room), 3);
	eq("nothing of the room is left", #(find(rooms, room, nil) or { 1 }), 0);

	return passed, failures;
end

local function result_stanza(stanza, passed, failures)
	local reply = st.reply(stanza):tag("result", { xmlns = xmlns; passed = tostring(passed); failed = tostring(#failures) });
	for _, f in ipairs(failures) do reply:text_tag("failure", f); end
	return reply;
end

module:hook("iq-set/host/" .. xmlns .. ":run", function (event)
	local stanza = event.stanza;
	local run = stanza.tags[1];
	local prefix = run.attr.prefix or "c";
	if run.attr.mode == "loop" then
		-- Outside any runner: from a timer; the iq waits in its own runner meanwhile.
		local wait, done = async.waiter();
		local passed, failures;
		module:add_timer(0, function ()
			local in_runner = async.ready();
			local ok, err = pcall(function () passed, failures = run_contract(prefix); end);
			if not ok then passed, failures = 0, { "error: " .. tostring(err) }; end
			if in_runner then failures[#failures + 1] = "the timer ran inside a runner"; end
			done();
		end);
		wait();
		event.origin.send(result_stanza(stanza, passed, failures));
		return true;
	end
	local in_runner = async.ready();
	local ok, passed, failures = pcall(run_contract, prefix);
	if not ok then passed, failures = 0, { "error: " .. tostring(passed) }; end
	if not in_runner then failures[#failures + 1] = "the iq was not in a runner"; end
	event.origin.send(result_stanza(stanza, passed, failures));
	return true;
end);

module:hook("iq-set/host/" .. xmlns .. ":find", function (event)
	local q = event.stanza.tags[1];
	local reply = st.reply(event.stanza):tag("items", { xmlns = xmlns });
	local iter, err = personal:find(q.attr.user, { with = q.attr.with });
	if not iter then
		event.origin.send(st.error_reply(event.stanza, "cancel", "internal-server-error", err));
		return true;
	end
	for key, item, when, with in iter do
		reply:text_tag("item", item:get_child_text("body") or "", { key = key; with = with; when = tostring(when) });
	end
	event.origin.send(reply);
	return true;
end);

module:hook("iq-set/host/" .. xmlns .. ":append", function (event)
	local q = event.stanza.tags[1];
	local key, err = personal:append(q.attr.user, nil,
		st.message({ type = "chat", from = q.attr.with .. "/probe", to = q.attr.user .. "@" .. module.host })
			:text_tag("body", q.attr.body), nil, q.attr.with);
	if not key then
		event.origin.send(st.error_reply(event.stanza, "cancel", "internal-server-error", err));
		return true;
	end
	event.origin.send(st.reply(event.stanza):tag("appended", { xmlns = xmlns; key = key }));
	return true;
end);
