-- Loads the built plugin's native library from a real lua5.4 exactly as the Prosody
-- shim does (package.loadlib on the .so in the module folder), with Prosody's own
-- util.stanza and util.jid, and checks the whole Lua API round trip.
--
-- usage: lua5.4 tests/lua/load_test.lua target/prosody-plugin/mod_mam

local plugin_dir = assert(arg[1], "usage: load_test.lua <plugin dir>");
package.path = "/usr/lib/prosody/?.lua;" .. package.path;
package.cpath = "/usr/lib/prosody/?.so;" .. package.cpath;

local st = require "util.stanza";
local jid_prep = require "util.jid".prep;

local passed, failed = 0, 0;
local function check(name, fn)
	local ok, err = pcall(fn);
	if ok then
		passed = passed + 1;
		print("ok   " .. name);
	else
		failed = failed + 1;
		print("FAIL " .. name .. ": " .. tostring(err));
	end
end

local function eq(a, b, what)
	if a ~= b then
		error(string.format("%s: expected %q, got %q", what or "value", tostring(b), tostring(a)), 2);
	end
end

local luaopen = assert(package.loadlib(plugin_dir .. "/mam_native.so", "luaopen_mam_native"));
local native = luaopen();

local tmp = os.tmpname();
os.remove(tmp);
assert(os.execute("mkdir -p " .. tmp));

local function open(options)
	return native.open {
		host = "localhost";
		data_path = tmp;
		options = options or {};
		stanza_mt = st.stanza_mt;
		jid_prep = jid_prep;
	};
end

check("the library exports open, version and the option names", function ()
	eq(type(native.open), "function");
	eq(type(native.version), "string");
	local names = {};
	for _, n in ipairs(native.option_names) do names[n] = true; end
	assert(names.archive_expires_after and names.max_archive_query_results, "option names");
end);

check("an invalid option is refused with a message naming it", function ()
	local archive, err = open { archive_expires_after = "soon" };
	eq(archive, nil);
	assert(err.log:find("archive_expires_after", 1, true), err.log);
end);

local archive = assert(open { archive_expires_after = "1w" });

-- No event loop here: poll the engine's completions, bounded in time.
local parked = {};
local function wait_job(job, handle)
	handle = handle or archive;
	assert(type(job) == "number", "expected a job id, got " .. tostring(job));
	local deadline = os.time() + 10;
	repeat
		if parked[job] then
			local c = parked[job];
			parked[job] = nil;
			return c;
		end
		for _, c in ipairs(handle:completions()) do
			if c.job then parked[c.job] = c; end
		end
	until os.time() > deadline;
	error("job " .. job .. " did not complete");
end

check("config reports the validated options", function ()
	local c = archive:config();
	eq(c.expires_after, 7 * 86400, "expires_after");
	eq(c.max_results, 50, "max_results");
	eq(c.storage, tmp .. "/mam_archive.sqlite", "storage");
end);

local msg = st.message({ to = "juliet@localhost", from = "romeo@montague.lit/orchard", type = "chat", id = "m1" })
	:text_tag("body", "Wherefore art thou?")
	:tag("active", { xmlns = "http://jabber.org/protocol/chatstates" }):up();

check("should_store applies the stock rules", function ()
	local ok, why = archive:should_store(msg);
	eq(ok, true); eq(why, "body");
	local ok2, why2 = archive:should_store(st.message({ type = "headline" }):text_tag("body", "x"));
	eq(ok2, false); eq(why2, "headline");
end);

local stored_id;
check("append returns the id, the stanza-id it added and the stored copy", function ()
	local delivered = st.clone(msg);
	local id, sid, stored = archive:append("juliet", "romeo@montague.lit/orchard", delivered, { announce = true });
	assert(type(id) == "string" and #id == 26, "id " .. tostring(id));
	eq(delivered:get_child("stanza-id", "urn:xmpp:sid:0"), sid, "added to the stanza itself");
	eq(sid.attr.id, id); eq(sid.attr.by, "juliet@localhost");
	assert(delivered:get_child("active", "http://jabber.org/protocol/chatstates"), "delivered keeps chat state");
	eq(stored:get_child("active", "http://jabber.org/protocol/chatstates"), nil, "stored copy strips chat state");
	eq(stored:get_child_text("body"), "Wherefore art thou?");
	stored_id = id;
end);

check("append with wait returns the write's sequence number and a committed notice follows", function ()
	local _, _, _, first = archive:append("tybalt", "romeo@montague.lit", st.clone(msg));
	local id, sid, stored, seq, upto = archive:append("tybalt", "romeo@montague.lit", st.clone(msg), { wait = true });
	assert(id and sid, "appended");
	eq(stored, nil, "no stored copy without announce");
	assert(math.type(seq) == "integer" and seq > first, "seq " .. tostring(seq) .. " after " .. tostring(first));
	-- How far the writer had committed when it was queued: never past the write itself.
	assert(math.type(upto) == "integer" and upto <= seq, "committed " .. tostring(upto) .. " with seq " .. seq);
	assert(archive:flush(10), "flushed");
	local _, _, _, later, upto_later = archive:append("tybalt", "romeo@montague.lit", st.clone(msg), { wait = true });
	assert(upto_later >= seq and upto_later <= later, "committed " .. upto_later .. " after flushing " .. seq);
	local deadline = os.time() + 10;
	local committed;
	repeat
		for _, c in ipairs(archive:completions()) do
			if c.committed then committed = math.max(committed or 0, c.committed);
			elseif c.job then parked[c.job] = c; end
		end
	until (committed and committed >= seq) or os.time() > deadline;
	assert(committed and committed >= seq, "no committed notice covering " .. seq);
	eq(archive:config().commit_before_delivery, true, "default mode");
	eq(archive:config().commit_wait_limit, 2.0, "default wait limit");
end);

check("a forged stanza-id is stripped into a new stanza", function ()
	local forged = st.clone(msg):tag("stanza-id", { xmlns = "urn:xmpp:sid:0", by = "juliet@localhost", id = "forged" }):up();
	local stripped = archive:strip_forged_ids(forged);
	assert(stripped, "expected a stripped copy");
	eq(stripped:get_child("stanza-id", "urn:xmpp:sid:0"), nil);
	eq(archive:strip_forged_ids(msg), nil, "nothing to strip");
end);

local second_id;
check("a second message in the same archive gets its own id", function ()
	local id = archive:append("juliet", "romeo@montague.lit/orchard", st.clone(msg));
	assert(id and id ~= stored_id, "a new id");
	second_id = id;
end);

check("the stanza-id is added to the stanza itself, as its last child, and returned", function ()
	local m = st.message({ to = "juliet@localhost", from = "romeo@montague.lit/orchard", type = "chat" })
		:text_tag("body", "In place");
	m:text(" ");
	local n, ntags = #m, #m.tags;
	local id, sid, stored = archive:append("nurse", "romeo@montague.lit/orchard", m, { check = true });
	assert(id, "appended");
	eq(stored, nil);
	eq(#m, n + 1); eq(#m.tags, ntags + 1);
	assert(rawequal(m[#m], sid) and rawequal(m.tags[#m.tags], sid), "last child and last tag");
	eq(getmetatable(sid), st.stanza_mt);
	eq(sid.name, "stanza-id"); eq(sid.attr.xmlns, "urn:xmpp:sid:0");
	eq(sid.attr.by, "nurse@localhost"); eq(sid.attr.id, id);
	eq(m:get_child("stanza-id", "urn:xmpp:sid:0"), sid, "util.stanza finds it");
	assert(tostring(m):find("<stanza-id xmlns='urn:xmpp:sid:0'", 1, true) or tostring(m):find("<stanza-id ", 1, true));
	eq(archive:flush(10), true);
end);

check("a message not archived on purpose says why in the one failure shape", function ()
	local headline = st.message({ to = "juliet@localhost", type = "headline" }):text_tag("body", "x");
	local id, err = archive:append("juliet", "romeo@montague.lit", headline, { check = true });
	eq(id, nil); eq(err.reason, "headline"); eq(err.log, "headline");
	assert(err.type and err.condition, "type and condition");
	local state = st.message({ to = "juliet@localhost" }):tag("active", { xmlns = "http://jabber.org/protocol/chatstates" }):up();
	local id2, err2 = archive:append("juliet", "romeo@montague.lit", state);
	eq(id2, nil); eq(err2.reason, "empty");
end);

check("forged stanza-ids are stripped even from a stanza too deep to convert", function ()
	local deep = st.message({ to = "juliet@localhost" }):text_tag("body", "deep");
	deep:tag("x", { xmlns = "urn:example:deep" });
	for _ = 1, 400 do deep:tag("x"); end
	deep:reset();
	deep:tag("stanza-id", { xmlns = "urn:xmpp:sid:0", by = "juliet@localhost", id = "forged" }):up();
	local stripped = assert(archive:strip_forged_ids(deep), "stripped");
	eq(stripped:get_child("stanza-id", "urn:xmpp:sid:0"), nil);
	eq(stripped:get_child_text("body"), "deep");
	local ok, why = archive:should_store(stripped);
	eq(ok, false); eq(why, "too deep");
end);

check("a query returns result messages as Prosody stanzas and a fin", function ()
	local q = st.stanza("query", { xmlns = "urn:xmpp:mam:2", queryid = "q1" });
	local c = wait_job(archive:query {
		user = "juliet"; query = q; to = "juliet@localhost/balcony"; from = "juliet@localhost";
	});
	assert(c.page, c.err and c.err.log);
	eq(c.count, 2, "result count");
	local results = c.page:stanzas();
	eq(#results, 3, "two results and the iq reply");
	local reply = table.remove(results);
	eq(getmetatable(reply), st.stanza_mt);
	eq(reply.name, "iq"); eq(reply.attr.type, "result");
	eq(reply.attr.to, "juliet@localhost/balcony"); eq(reply.attr.from, "juliet@localhost");
	local fin = reply.tags[1];
	assert(not pcall(c.page.xml, c.page), "a page is taken once");
	local r = results[1];
	eq(getmetatable(r), st.stanza_mt);
	eq(r.attr.to, "juliet@localhost/balcony");
	local result = r:get_child("result", "urn:xmpp:mam:2");
	eq(result.attr.id, stored_id); eq(result.attr.queryid, "q1");
	local fwd = result:get_child("forwarded", "urn:xmpp:forward:0");
	local inner = fwd:get_child("message", "jabber:client");
	eq(inner:get_child_text("body"), "Wherefore art thou?");
	eq(fin.name, "fin"); eq(fin.attr.complete, "true");
	eq(fin:find("{http://jabber.org/protocol/rsm}set/count#"), "2");
	-- Prosody can serialise what we built.
	assert(tostring(r):find("Wherefore art thou?", 1, true));
end);

-- Same element tree: names, namespaces (declared or inherited), other attributes in
-- any order, children in order.
local function same_tree(a, b, where, parent_ns)
	eq(type(a), type(b), where .. ": kind");
	if type(a) == "string" then eq(a, b, where .. ": text"); return; end
	eq(a.name, b.name, where .. ": name");
	local a_ns, b_ns = a.attr.xmlns or parent_ns, b.attr.xmlns or parent_ns;
	eq(a_ns, b_ns, where .. ": namespace");
	for k, v in pairs(a.attr) do if k ~= "xmlns" then eq(b.attr[k], v, where .. ": attribute " .. k); end end
	for k, v in pairs(b.attr) do if k ~= "xmlns" then eq(a.attr[k], v, where .. ": attribute " .. k); end end
	eq(#a, #b, where .. ": child count");
	for i = 1, #a do same_tree(a[i], b[i], where .. "/" .. i, a_ns); end
end

check("the serialised results are the stanzas as Prosody writes and reads them", function ()
	local q = st.stanza("query", { xmlns = "urn:xmpp:mam:2", queryid = "q2" });
	local function ask(serialised)
		return wait_job(archive:query {
			user = "juliet"; query = q; to = "juliet@localhost/balcony"; from = "juliet@localhost";
			iq_id = "iq7"; serialised = serialised;
		}).page;
	end
	-- Each form as asked, and each page also in the other form (a session's filters
	-- can change while its query runs).
	local forms = { ask(false):stanzas(), ask(true):xml(), ask(true):stanzas(), ask(false):xml() };
	eq(ask(true):xml(true), table.concat(forms[2]), "joined: the same strings in one");
	local stanzas, xml = forms[1], forms[2];
	eq(#stanzas, 3, "two results and the reply");
	for f = 3, 4 do eq(#forms[f], 3, "form " .. f); end
	for i = 1, #xml do
		eq(type(xml[i]), "string");
		local parsed = assert(require "util.xml".parse(xml[i]));
		same_tree(assert(require "util.xml".parse(forms[4][i])), parsed, "converted on the loop, result " .. i);
		same_tree(parsed, stanzas[i], "result " .. i);
		same_tree(forms[3][i], stanzas[i], "re-parsed result " .. i);
		-- Each a single stanza, ready for session.send (no declaration, no stream).
		eq(xml[i]:sub(1, #(i < 3 and "<message " or "<iq ")), i < 3 and "<message " or "<iq ");
		eq(#xml[i], #tostring(stanzas[i]), "same length as tostring");
	end
	eq(stanzas[3].attr.id, "iq7", "the reply repeats the request's id");
end);

check("a query with an unknown field is feature-not-implemented", function ()
	local q = st.stanza("query", { xmlns = "urn:xmpp:mam:2" })
		:tag("x", { xmlns = "jabber:x:data", type = "submit" })
			:tag("field", { var = "FORM_TYPE" }):text_tag("value", "urn:xmpp:mam:2"):up()
			:tag("field", { var = "fulltext" }):text_tag("value", "hi"):up();
	local results, err = archive:query { user = "juliet"; query = q };
	eq(results, nil); eq(err.condition, "feature-not-implemented"); eq(err.type, "cancel");
end);

check("an unknown after-id is item-not-found", function ()
	local q = st.stanza("query", { xmlns = "urn:xmpp:mam:2" })
		:tag("set", { xmlns = "http://jabber.org/protocol/rsm" }):text_tag("after", "nope");
	local c = wait_job(archive:query { user = "juliet"; query = q });
	eq(c.page, nil); eq(c.err.condition, "item-not-found");
end);

check("metadata names the first and last message", function ()
	local md = wait_job(archive:metadata("juliet")).metadata;
	eq(md:get_child("start").attr.id, stored_id);
	eq(md:get_child("end").attr.id, second_id, "end is the newest");
	eq(#wait_job(archive:metadata("nobody")).metadata.tags, 0, "empty archive");
end);

check("prefs round trip with JIDs normalised by util.jid.prep", function ()
	local set = st.stanza("prefs", { xmlns = "urn:xmpp:mam:2", default = "roster" })
		:tag("always"):text_tag("jid", "Romeo@Montague.lit"):up()
		:tag("never"):text_tag("jid", "tybalt@capulet.lit"):up();
	local prefs = assert(archive:prefs("juliet", set));
	eq(prefs.attr.default, "roster");
	eq(prefs:find("always/jid#"), "romeo@montague.lit");
	eq(archive:rule("juliet", "tybalt@capulet.lit/x"), "skip");
	eq(archive:rule("juliet", "romeo@montague.lit"), "store");
	eq(archive:rule("juliet", "nurse@capulet.lit"), "roster");
end);

check("the stored copy is only built when asked for", function ()
	local id, sid, stored = archive:append("romeo", "juliet@localhost", st.clone(msg), {});
	assert(id and sid, "appended");
	eq(stored, nil);
end);

check("flush waits until queued writes are committed", function ()
	eq(archive:flush(10), true);
end);

check("stats reports queued and committed writes and the database size", function ()
	local s = archive:stats();
	eq(math.type(s.writes_queued), "integer", "writes_queued");
	assert(s.writes_queued > 0, "writes were queued");
	eq(s.writes_committed, s.writes_queued, "all committed after flush");
	eq(s.queue_depth, 0, "queue_depth");
	assert(math.type(s.database_bytes) == "integer" and s.database_bytes > 0, "database_bytes");
end);

check("an expiry step reports what it deleted and whether more remain", function ()
	local c = wait_job(archive:expire_step());
	eq(c.err, nil);
	eq(math.type(c.deleted), "integer"); eq(c.deleted, 0, "nothing is a week old");
	eq(c.more, false);
	local never = assert(open { archive_expires_after = "never"; archive_store = "never_expires" });
	eq(never:expire_step(), false, "an archive that never expires has no step");
	never:close();
end);

check("delete_user empties the archive", function ()
	eq(wait_job(archive:delete_user("juliet")).count, 2);
	eq(#wait_job(archive:metadata("juliet")).metadata.tags, 0);
end);

check("the engine's log lines and completions wake a watched descriptor", function ()
	local fd = archive:notify_fd();
	assert(type(fd) == "number" and fd > 2, "fd " .. tostring(fd));
end);

check("a room archive: history as Prosody stanzas newest first, real JIDs hidden on request, unknown ids refused", function ()
	local rooms = native.open {
		host = "rooms.localhost"; data_path = tmp; options = {}; owners = "rooms";
		stanza_mt = st.stanza_mt; jid_prep = jid_prep;
	};
	eq(rooms:config().archive_store, "muc_log");
	eq(rooms:config().owners, "rooms");
	local ids = {};
	for i = 1, 3 do
		local m = st.message({ from = "lobby@rooms.localhost/nick", type = "groupchat" }):text_tag("body", "m" .. i)
			:tag("x", { xmlns = "http://jabber.org/protocol/muc#user" })
			:tag("item", { jid = "juliet@localhost", affiliation = "member", role = "participant" }):up():up();
		local id, sid = rooms:append("lobby", "lobby@rooms.localhost/nick", m, {});
		assert(id, sid and sid.log);
		eq(sid.attr.by, "lobby@rooms.localhost", "stanza-id by the room");
		ids[i] = id;
	end
	local h = wait_job(rooms:history("lobby", { limit = 2 }), rooms);
	assert(h.items, h.err and h.err.log);
	eq(#h.items, 2); eq(h.items[1].id, ids[3]); eq(h.items[2].id, ids[2]);
	eq(getmetatable(h.items[1].stanza), st.stanza_mt);
	eq(h.items[1].stanza:get_child_text("body"), "m3");
	assert(type(h.items[1].when) == "number" and h.items[1].when > 1.6e9, "when in seconds");
	local function results(hide)
		local c = wait_job(rooms:query({
			user = "lobby"; query = st.stanza("query", { xmlns = "urn:xmpp:mam:2" });
			to = "romeo@localhost/r"; from = "lobby@rooms.localhost"; hide_real_jids = hide;
		}), rooms);
		assert(c.page, c.err and c.err.log);
		local out = c.page:stanzas();
		table.remove(out);
		return out;
	end
	local function real_jid(r)
		local inner = r:get_child("result", "urn:xmpp:mam:2"):get_child("forwarded", "urn:xmpp:forward:0")
			:get_child("message", "jabber:client");
		local x = inner:get_child("x", "http://jabber.org/protocol/muc#user");
		return x and x:get_child("item").attr.jid;
	end
	eq(real_jid(results(false)[1]), "juliet@localhost");
	eq(real_jid(results(true)[1]), nil, "hidden");
	-- As Prosody's parser builds it: every element names its namespace.
	local data = { xmlns = "jabber:x:data" };
	local q = st.stanza("query", { xmlns = "urn:xmpp:mam:2" })
		:tag("x", { xmlns = "jabber:x:data", type = "submit" })
		:tag("field", { xmlns = data.xmlns, var = "FORM_TYPE" }):text_tag("value", "urn:xmpp:mam:2", data):up()
		:tag("field", { xmlns = data.xmlns, var = "ids" })
		:text_tag("value", ids[1], data):text_tag("value", "no-such-id", data):up():up();
	local c = wait_job(rooms:query { user = "lobby"; query = q; to = "romeo@localhost/r" }, rooms);
	eq(c.err and c.err.condition, "item-not-found");
	rooms:close();
end);

check("a closed handle raises instead of crashing", function ()
	archive:close();
	local ok = pcall(archive.metadata, archive, "juliet");
	eq(ok, false);
end);

os.execute("rm -rf " .. tmp);
print(string.format("%d passed, %d failed", passed, failed));
os.exit(failed == 0 and 0 or 1);
