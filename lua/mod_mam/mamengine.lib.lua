-- The native engine for this module on this host, as Prosody sees it: the library
-- (mam_native.so, found by path: no lua_cpath changes needed), the
-- archive handle (reopened in the background while the database cannot be opened),
-- the jobs whose results come back through a watched socket, the output barrier
-- that sends nothing to a session ahead of the archive's commits, expiry on its
-- schedule, and a close that commits every queued write. The module file only wires
-- Prosody's events to what start() returns.

local st = require "util.stanza";
local jid_prep = require "util.jid".prep;
local async = require "util.async";
local server = require "net.server";
local time_now = require "util.time".monotonic or require "util.time".now;
local add_task = require "util.timer".add_task;
local filters = require "util.filters";

-- Before every other stanzas/out filter (stream management counts what passes).
local hold_filter_priority = 1000;

local host = module.host;

-- Every engine open in this Prosody, by host and then archive store name: another
-- module on the same host (the storage provider, mod_storage_mam_native) uses the
-- engine already open on a database instead of opening a second one on it.
local open_engines = module:shared("/*/mam_native/engines");

-- Every engine's output-barrier filter (mod_mam's and mod_muc_mam's are on every
-- session when both are loaded): none of them needs stanza objects (output_form).
local hold_filters = module:shared("/*/mam_native/hold_filters");

-- Seconds between attempts to open a database that could not be opened.
local open_retry_interval = 5;

-- Where mam_native.so is: beside this file (make plugin, the Debian package); else
-- where LuaRocks put it, <tree>/lib/lua/<version>/ for a module in
-- <tree>/share/lua/<version>/mod_mam/ or mod_muc_mam/ (Prosody 13's `prosodyctl install` does not add
-- that directory to package.cpath, so it is found by path); else on package.cpath.
local function native_library_path()
	local dir = module:get_directory();
	local candidates = { dir .. "/mam_native.so" };
	local tree, lua_version = dir:match("^(.*)/share/lua/([^/]+)/mod_[%w_]+/*$");
	if tree then
		candidates[#candidates + 1] = tree .. "/lib/lua/" .. lua_version .. "/mam_native.so";
	end
	for _, path in ipairs(candidates) do
		local file = io.open(path, "rb");
		if file then
			file:close();
			return path;
		end
	end
	return package.searchpath("mam_native", package.cpath) or candidates[1];
end

local function load_native()
	local native_path = native_library_path();
	local luaopen, load_err = package.loadlib(native_path, "luaopen_mam_native");
	if not luaopen then
		module:log("error", "Could not load the native MAM engine from %s: %s", native_path, tostring(load_err));
		error("mod_mam: native library missing or incompatible: " .. tostring(load_err));
	end
	local native = luaopen();
	native.library_path = native_path;
	return native;
end

-- Opens the archive: returns the engine table, whose `archive` is nil while the
-- database cannot be opened; engine.run(metrics) then takes it into use. A bad
-- option fails the module load at once, before any hook or metric is set (it will
-- not fix itself, and Prosody keeps the hooks of a module that fails to load).
-- `settings` (optional): `owners` ("accounts" or "rooms") and `options`, values
-- that replace the module's own options (the storage provider names its store).
local function open(native, settings)
	local engine = {};
	local metrics;

	-- Every option is read here and validated once, in Rust.
	local options = {};
	for _, name in ipairs(native.option_names) do
		options[name] = module:get_option(name);
	end
	for name, value in pairs(settings and settings.options or {}) do
		options[name] = value;
	end

	-- background: connect on a native thread and return an object to poll, so retries
	-- against an unreachable database server never hold the event loop.
	local function open_handle(background)
		return native.open {
			host = host;
			data_path = prosody.paths.data;
			options = options;
			stanza_mt = st.stanza_mt;
			jid_prep = jid_prep;
			background = background;
			owners = settings and settings.owners;
		};
	end

	local open_started = time_now();
	local first_handle, first_err = open_handle();
	local open_took = time_now() - open_started;
	if open_took >= 2 then
		-- Only a schema upgrade takes this long (once, at the first start of a new
		-- version: docs/storage-size.md), and before any client is served.
		module:log("info", "Opening the archive took %.1f s (a schema upgrade after a new version of the module copies the archive once)", open_took);
	end
	if not first_handle and first_err.config then
		module:log("error", "%s", first_err.log);
		error("mod_mam: " .. first_err.log);
	end

	-- Work held in its session's runner until the archive rows it depends on are
	-- committed (offline storage, listeners; see holds_delivery): a queue in write
	-- order, as parallel arrays so holding allocates no table.
	local held_seq, held_resume, held_since, held_origin = {}, {}, {}, {};
	local held_first, held_last = 1, 0;
	-- While commits lag past mam_commit_wait_limit: { since =, delivered = count };
	-- everything goes out at once until the writer reports every queued write
	-- committed.
	local outage;
	local watchdog_armed = false;

	-- A session's runner that waits pauses its connection, and the resume that
	-- follows only watches the socket (net.server_epoll, 0.12 and 13): stanzas the
	-- socket library had already read into its buffer would sit there until the
	-- client sent more. Once the runner is ready again, such a session is read
	-- from, as Prosody itself does after a timed pause. The runner gets ready in a
	-- zero-delay task of its own, so the check runs in the loop's next turns, until
	-- the runner is ready, waits for us again (a later release checks then), or a
	-- few turns passed (it waits for something else, which resumes it itself).
	local holds = {}; -- session -> deliveries of it held now
	local to_kick = {}; -- session -> turns left
	local kick_scheduled = false;
	local function kick()
		local again = false;
		for origin, left in pairs(to_kick) do
			local conn, thread = origin.conn, origin.thread;
			if not (conn and conn.conn and thread) or holds[origin] then
				to_kick[origin] = nil;
			elseif thread.state == "ready" then
				to_kick[origin] = nil;
				if conn._wantread and conn.conn:dirty() then
					conn:onreadable();
				end
			elseif left > 1 then
				to_kick[origin] = left - 1;
				again = true;
			else
				to_kick[origin] = nil;
			end
		end
		if again then return 0; end
		kick_scheduled = false;
	end
	local function kick_if_buffered(origin)
		local conn = origin and origin.conn;
		local sock = type(conn) == "table" and conn.conn;
		if not (sock and sock.dirty and conn.onreadable and sock:dirty()) then return; end
		to_kick[origin] = 20;
		if not kick_scheduled then
			kick_scheduled = true;
			add_task(0, kick);
		end
	end

	-- Resumes the held deliveries whose writes are committed (all of them with no
	-- argument). A resumed runner may go on to hold its session's next message:
	-- that one's write is newer than anything committed, so it stays held.
	local function release(upto)
		while held_first <= held_last do
			if upto and held_seq[held_first] > upto then break; end
			local resume, origin = held_resume[held_first], held_origin[held_first];
			held_seq[held_first], held_resume[held_first], held_since[held_first], held_origin[held_first] = nil, nil, nil, nil;
			held_first = held_first + 1;
			if origin then
				local n = holds[origin];
				holds[origin] = n > 1 and n - 1 or nil;
			end
			-- util.async resumes the runner protected and reports its errors itself.
			resume();
			kick_if_buffered(origin);
		end
	end

	-- The output barrier (mam_commit_before_delivery): a session's outgoing stanzas
	-- pass a filter that holds a message while any archive write queued before it is
	-- not committed yet, and everything sent to that session after it (order kept),
	-- until the writer reports the commit. What a client is given (a message with its
	-- stanza-id, a carbon, a reply) is then always in the archive, whatever happens to
	-- the server next, and nobody's stanzas wait to be processed: the sender's session
	-- goes on at once, and each recipient gets what one commit covered in one go.
	local queued_seq, committed_seq = 0, 0;
	-- session -> { first =, last =, since =, stanzas = {}, need = {}, newest =,
	--              attrs = {}, to = {}, from = {}, type = {}, id = {} }
	local held_out = setmetatable({}, { __mode = "k" });
	local passing; -- the session whose held stanzas are being sent on now
	-- The sessions in the order their held messages may go: a session is queued
	-- again, with the write it now waits for, each time it holds a message waiting
	-- for a newer write than its last one. Writes only get newer along the queue, so
	-- a commit visits the sessions it releases something for, not every session that
	-- holds something (under load nearly every recipient, at nearly every commit).
	local due_seq, due_session = {}, {};
	local due_first, due_last = 1, 0;

	local arm_watchdog; -- below, with the watchdog

	local stanza_mt = st.stanza_mt;
	local t_move = table.move;
	-- A session's queue of held stanzas. Under load a session holds one or two
	-- messages at a time, over and over: an emptied queue is kept for the next
	-- session that holds something (its arrays keep their size), instead of new
	-- tables per held message for the collector.
	local spare_queues, spare_count = {}, 0;
	local function spare_queue()
		if spare_count == 0 then
			return { first = 1; last = 0; since = 0; stanzas = {}; need = {}; newest = 0;
				attrs = {}; to = {}; from = {}; type = {}; id = {} };
		end
		local q = spare_queues[spare_count];
		spare_queues[spare_count] = nil;
		spare_count = spare_count - 1;
		return q;
	end
	local function keep_spare(q)
		if spare_count < 256 then
			q.first, q.last, q.newest = 1, 0, 0;
			spare_count = spare_count + 1;
			spare_queues[spare_count] = q;
		end
	end

	-- A held stanza is sent as it was when it was held, though Prosody's modules may
	-- change a stanza once sent: MUC and presence broadcasts readdress one object
	-- for each recipient (private messages we archive included). The queue keeps the
	-- stanza itself and its addressing (the attribute table, to, from, type, id);
	-- one changed since is sent as a copy with the addressing it had. A copy of each
	-- held stanza, as before, was three tables per message for the collector, whose
	-- marking and sweeping are most of the loop's time under load (measured).
	local function as_held(stanza, held_attr, held_to, held_from, held_type, held_id)
		local attr = {};
		for k, v in pairs(held_attr) do attr[k] = v; end
		attr.to, attr.from, attr.type, attr.id = held_to, held_from, held_type, held_id;
		local tags = stanza.tags;
		local copy = { name = stanza.name; attr = attr; tags = t_move(tags, 1, #tags, 1, {}) };
		return setmetatable(t_move(stanza, 1, #stanza, 1, copy), stanza_mt);
	end

	-- What waits its turn behind a held message: stanzas. Stream-level elements
	-- (stream management's <r/>, <a/>, <enabled/>, <resumed/>; stream errors) go out
	-- at once: they are about the stream, not its content, and a client resuming its
	-- stream must get <resumed/> before the stanzas it missed, not after a commit.
	local holdable = { message = true; presence = true; iq = true };

	local function hold_filter(stanza, session)
		if passing == session or not holdable[stanza.name] then return stanza; end
		local q = held_out[session];
		if not q then
			if committed_seq >= queued_seq or stanza.name ~= "message" then
				return stanza;
			end
			if outage then
				outage.delivered = outage.delivered + 1;
				metrics.delivered_uncommitted["storage slow"]:add(1);
				return stanza;
			end
			q = spare_queue();
			q.since = time_now();
			held_out[session] = q;
			arm_watchdog();
		end
		local last = q.last + 1;
		q.last = last;
		local attr = stanza.attr;
		q.stanzas[last], q.attrs[last] = stanza, attr;
		q.to[last], q.from[last], q.type[last], q.id[last] = attr.to, attr.from, attr.type, attr.id;
		-- A message waits for every write queued before it; anything else only for
		-- what is ahead of it.
		if stanza.name == "message" then
			q.need[last] = queued_seq;
			if queued_seq > q.newest then
				q.newest = queued_seq;
				due_last = due_last + 1;
				due_seq[due_last], due_session[due_last] = queued_seq, session;
			end
		else
			q.need[last] = 0;
		end
		return nil;
	end
	engine.hold_filter = hold_filter;
	hold_filters[hold_filter] = true;

	-- A held stanza goes out through the rest of the session's output as if it had
	-- passed the first time. Through session.send again where that is not known to
	-- be Prosody's own c2s send; for a session whose send is (a closure of
	-- sessionmanager.new_session over this very session and its filter), the same
	-- two steps without the debug line it starts with: that line was logged when
	-- the stanza was first sent, and Prosody builds its top tag (a clone and a
	-- serialisation) whether or not debug logging is on: a tenth of the loop's time
	-- per message at saturation, measured. A resumed stream-management session runs
	-- another session's send (the upvalue differs) and takes session.send.
	local new_session_source, new_session_first, new_session_last;
	do
		local ok, sessionmanager = pcall(require, "core.sessionmanager");
		local info = ok and type(sessionmanager.new_session) == "function"
			and debug.getinfo(sessionmanager.new_session, "S");
		if info then
			new_session_source, new_session_first, new_session_last =
				info.source, info.linedefined, info.lastlinedefined;
		end
	end
	local checked_send = setmetatable({}, { __mode = "k" }); -- session -> send checked
	local plain = setmetatable({}, { __mode = "k" }); -- session -> whether it is Prosody's
	local function is_plain_send(session)
		local send = session.send;
		if checked_send[session] == send then return plain[session]; end
		local ok = false;
		local info = new_session_source and type(send) == "function" and debug.getinfo(send, "S");
		if info and info.source == new_session_source and info.linedefined > new_session_first
				and info.linedefined < new_session_last
				and type(session.rawsend) == "function" and type(session.filter) == "function" then
			local own_session, own_filter = false, false;
			for i = 1, 16 do
				local name, value = debug.getupvalue(send, i);
				if not name then break; end
				if name == "session" then own_session = rawequal(value, session);
				elseif name == "filter" then own_filter = rawequal(value, session.filter); end
			end
			ok = own_session and own_filter;
		end
		checked_send[session], plain[session] = send, ok;
		return ok;
	end

	-- Sends the session's held stanzas up to write `upto` (all with no `upto`).
	-- `outputs`: the session's "stanzas/out" filters, for a session whose send is
	-- Prosody's own: each but this engine's filter runs (another engine's may hold
	-- the stanza in turn), then rawsend, as Prosody's send does after its debug line.
	-- `q.first` moves before each send, so an error leaves the rest to send.
	local function send_due(session, q, upto, outputs)
		local first, last, stanzas, need = q.first, q.last, q.stanzas, q.need;
		local attrs, tos, froms, types, ids = q.attrs, q.to, q.from, q.type, q.id;
		while first <= last and (not upto or need[first] <= upto) do
			local stanza, held_attr = stanzas[first], attrs[first];
			local attr = stanza.attr;
			if attr ~= held_attr or attr.to ~= tos[first] or attr.from ~= froms[first]
					or attr.type ~= types[first] or attr.id ~= ids[first] then
				stanza = as_held(stanza, held_attr, tos[first], froms[first], types[first], ids[first]);
			end
			stanzas[first], need[first], attrs[first] = nil, nil, nil;
			tos[first], froms[first], types[first], ids[first] = nil, nil, nil, nil;
			first = first + 1;
			q.first = first;
			if outputs then
				for i = 1, #outputs do
					local output = outputs[i];
					if output ~= hold_filter then
						stanza = output(stanza, session);
						if stanza == nil then break; end
					end
				end
				if stanza then session.rawsend(stanza); end
			else
				session.send(stanza);
			end
		end
	end

	local function send_held(session, q, upto)
		if upto and q.need[q.first] > upto then return; end
		local filter_lists = is_plain_send(session) and session.filters;
		local outputs = filter_lists and filter_lists["stanzas/out"] or nil;
		passing = session;
		repeat
			local from = q.first;
			local ok, err = pcall(send_due, session, q, upto, outputs);
			if not ok then module:log("error", "Sending a stanza held for its commit failed: %s", err); end
		until ok or q.first == from
		passing = nil;
		if q.first > q.last then
			held_out[session] = nil;
			keep_spare(q);
		else
			q.since = time_now();
		end
	end

	-- Up to write `upto`: the sessions queued as due by then, in order. Sending may
	-- make another session hold something (queued behind, and visited in this same
	-- walk if it is due already).
	local function release_due(upto)
		while due_first <= due_last and due_seq[due_first] <= upto do
			local session = due_session[due_first];
			due_seq[due_first], due_session[due_first] = nil, nil;
			due_first = due_first + 1;
			local q = held_out[session];
			if q then send_held(session, q, upto); end
		end
		if due_first > due_last then due_first, due_last = 1, 0; end
	end

	-- Everything held, at once (an outage, a stop): the sessions first, since sending
	-- may make another session hold something and a table must not gain keys while
	-- it is traversed.
	local releasing = {};
	local function release_outputs(upto)
		if upto then return release_due(upto); end
		for i = due_first, due_last do due_seq[i], due_session[i] = nil, nil; end
		due_first, due_last = 1, 0;
		local n = 0;
		for session in pairs(held_out) do
			n = n + 1;
			releasing[n] = session;
		end
		for i = 1, n do
			local session = releasing[i];
			releasing[i] = nil;
			local q = held_out[session];
			if q then send_held(session, q); end
		end
	end

	-- Called with every archive write a delivery must not overtake, and how far the
	-- writer had committed then (append's last value). Under load the loop serves
	-- every readable connection before it comes back to the writer's notice: each
	-- commit's messages waited that long, several hundred held at once, and the
	-- collector marked them over and over (measured: most of this barrier's cost).
	-- What the writer is past already goes now instead. The runners waiting in
	-- await_commit are left to the notice: this is another runner's handler.
	function engine.queued(seq, upto)
		if seq > queued_seq then queued_seq = seq; end
		if upto and upto > committed_seq and not outage then
			committed_seq = upto;
			release_due(upto);
		end
	end

	-- The newest such write when it is not committed yet, else nil.
	function engine.pending_seq()
		if queued_seq > committed_seq and not outage then return queued_seq; end
	end

	-- Adds the filter to a session (every new one, through util.filters' hook).
	local filtered = setmetatable({}, { __mode = "k" });
	local function add_hold_filter(session)
		filtered[session] = true;
		filters.add_filter(session, "stanzas/out", hold_filter, hold_filter_priority);
	end

	local function install_output_barrier()
		filters.add_filter_hook(add_hold_filter);
		-- Sessions that exist already (a module reload).
		for _, session in pairs(prosody.full_sessions) do add_hold_filter(session); end
		for session in pairs(prosody.incoming_s2s) do add_hold_filter(session); end
		for _, h in pairs(prosody.hosts) do
			for _, session in pairs(h.s2sout or {}) do add_hold_filter(session); end
		end
	end

	local function remove_output_barrier()
		hold_filters[hold_filter] = nil;
		filters.remove_filter_hook(add_hold_filter);
		for session in pairs(filtered) do
			filters.remove_filter(session, "stanzas/out", hold_filter);
		end
		queued_seq = committed_seq;
	end

	local function committed(upto)
		if upto > committed_seq then committed_seq = upto; end
		release(upto);
		release_outputs(upto);
		if outage and upto >= queued_seq then
			module:log("info", "Archive commits caught up after %.1f s; %d deliveries went out before their commit meanwhile",
				time_now() - outage.since, outage.delivered);
			outage = nil;
		end
	end

	-- Storage that takes longer than the limit to commit (failing, locked, too slow)
	-- must not stop delivery: the held messages go out, still queued for the archive.
	local function oldest_hold()
		local oldest = held_first <= held_last and held_since[held_first] or nil;
		for _, q in pairs(held_out) do
			if not oldest or q.since < oldest then oldest = q.since; end
		end
		return oldest;
	end

	local function watchdog()
		local oldest = not outage and oldest_hold();
		if not oldest then
			watchdog_armed = false;
			return;
		end
		local limit = engine.config.commit_wait_limit;
		local waited = time_now() - oldest;
		if waited < limit then return limit - waited; end
		local count = held_last - held_first + 1;
		for _, q in pairs(held_out) do count = count + (q.last - q.first + 1); end
		outage = { since = time_now(); delivered = count };
		module:log("error", "Archive commits are taking longer than %g s: delivering messages before their commit "
			.. "until the archive catches up (they stay queued for it; %d held stanzas released)", limit, count);
		metrics.delivered_uncommitted["storage slow"]:add(count);
		watchdog_armed = false;
		release();
		release_outputs();
	end
	arm_watchdog = function ()
		if not watchdog_armed then
			watchdog_armed = true;
			module:add_timer(engine.config.commit_wait_limit, watchdog);
		end
	end

	-- Whether what is about to leave outside any session's output (offline storage,
	-- archive-message-added listeners) can wait for its commit: the option is on and
	-- the stanza is being processed in a session's async runner (c2s, s2s, BOSH,
	-- websocket), where waiting holds that session's stanzas and not the server.
	function engine.holds_delivery()
		if not engine.config.commit_before_delivery then return false; end
		if async.ready() then return true; end
		metrics.delivered_uncommitted["outside runner"]:add(1);
		return false;
	end

	-- Holds the running delivery until write `seq` is committed. Call only where
	-- holds_delivery() said so, right after appending with { wait = true };
	-- `origin` is the session whose runner this is.
	function engine.await_commit(seq, origin)
		if outage then
			outage.delivered = outage.delivered + 1;
			metrics.delivered_uncommitted["storage slow"]:add(1);
			return;
		end
		local wait, done = async.waiter();
		held_last = held_last + 1;
		held_seq[held_last], held_resume[held_last], held_since[held_last], held_origin[held_last] = seq, done, time_now(), origin;
		if origin then holds[origin] = (holds[origin] or 0) + 1; end
		arm_watchdog();
		wait();
	end

	-- Jobs finished on the engine's threads come back here: the engine makes a socket
	-- readable, the loop calls us, we hand each result to whoever waits for it.
	local waiting = {}; -- job id -> function (completion)
	local function on_completions()
		local done = engine.archive:completions();
		for i = 1, #done do
			local c = done[i];
			if c.log then
				module:log(c.level, "%s", c.log);
			elseif c.committed then
				committed(c.committed);
			else
				local callback = waiting[c.job];
				waiting[c.job] = nil;
				if callback then
					callback(c);
				end
			end
		end
	end
	local completion_watch;

	-- Runs `callback(completion)` when job `job` finishes, from the loop.
	function engine.on_done(job, callback)
		waiting[job] = callback;
	end

	-- Like on_done, but inside a session's async runner (every c2s stanza in 0.12)
	-- the handler waits there, so a session's stanzas stay in order while the rest of
	-- the server carries on.
	function engine.when_done(job, callback)
		if async.ready() then
			local wait, done = async.waiter();
			local result;
			waiting[job] = function (c) result = c; done(); end;
			wait();
			return callback(result);
		end
		waiting[job] = callback;
	end

	-- Like when_done, for a read: answered at once when the engine has it within a
	-- fraction of a millisecond (see Archive::answer_now).
	function engine.when_read(job, callback)
		local c = engine.archive:answer_now(job);
		if c then return callback(c); end
		return engine.when_done(job, callback);
	end

	-- Expiry: every archive_cleanup_interval, the engine's expiry thread deletes
	-- expired messages one batch (one short transaction) at a time; we ask for the
	-- next batch while the last one says there may be more.
	local expiry_running = false;
	local function expiry_ended(err)
		if err then module:log("error", "Expiry failed: %s", err.log); end
		expiry_running = false;
		metrics.expiry_runs:add(1);
	end
	local function expire_step(total, started)
		local job, err = engine.archive:expire_step();
		if not job then return expiry_ended(err); end
		engine.on_done(job, function (c)
			if c.err then return expiry_ended(c.err); end
			total = total + c.deleted;
			metrics.expired:add(c.deleted);
			if c.more then
				return expire_step(total, started);
			end
			expiry_ended();
			local took = time_now() - started;
			metrics.expiry_duration:sample(took);
			if total > 0 then
				module:log("info", "Deleted %d expired messages", total);
			end
			module:log("debug", "Expiry run finished: %d deleted in %.3f s", total, took);
		end);
	end

	local function start_expiry()
		if not engine.config.expires_after then
			module:log("debug", "Archive expiry disabled");
			return;
		end
		module:add_timer(1, function ()
			if not engine.archive then return; end
			if not expiry_running then
				expiry_running = true;
				expire_step(0, time_now());
			end
			return engine.config.cleanup_interval;
		end);
	end

	-- Set once the module is unloading or Prosody is stopping.
	local closed = false;

	-- Takes an open handle into use.
	local function adopt(handle)
		engine.archive, engine.config = handle, handle:config();
		for _, warning in ipairs(engine.config.warnings) do
			module:log("warn", "%s", warning);
		end
		completion_watch = server.watchfd(handle:notify_fd(), on_completions);
		if engine.config.commit_before_delivery then install_output_barrier(); end
		local by_store = open_engines[host] or {};
		open_engines[host] = by_store;
		by_store[engine.config.archive_store] = engine;
		module:log("debug", "Archive at %s, expiry %s", engine.config.storage,
			engine.config.expires_after and (engine.config.expires_after .. "s") or "never");
		start_expiry();
	end

	-- A database that cannot be opened (corrupt, read-only, missing directory, server
	-- down) leaves the module loaded, answering MAM with a temporary error and trying
	-- again every few seconds in the background, so service comes back by itself when
	-- the fault is cleared.
	function engine.run(module_metrics)
		metrics = module_metrics;
		-- Gauges from the engine, read whenever Prosody collects statistics (every
		-- statistics_interval, or on each scrape with "manual"): two counters and a
		-- stat(2).
		module:hook_global("stats-update", function ()
			local archive = engine.archive;
			if not archive then return; end
			local stats = archive:stats();
			metrics.database_size:set(stats.database_bytes);
			metrics.queue_depth:set(stats.queue_depth);
			metrics.writes_committed:set(stats.writes_committed);
		end);
		if first_handle then
			adopt(first_handle);
			first_handle = nil;
			return;
		end
		module:log("error", "%s; MAM answers with a temporary error and the database is tried again every %d s",
			first_err.log, open_retry_interval);
		first_err = nil;
		local opening, next_attempt = nil, time_now() + open_retry_interval;
		module:add_timer(1, function ()
			if closed then return; end
			if opening then
				local handle = opening:poll();
				if handle == false then return 1; end -- still connecting
				opening = nil;
				if handle then
					adopt(handle);
					module:log("info", "Archive database opened; archiving resumed");
					return;
				end
			end
			if time_now() >= next_attempt then
				next_attempt = time_now() + open_retry_interval;
				opening = open_handle(true);
			end
			return 1;
		end);
	end

	-- Unload and shutdown commit every queued write before the database closes.
	function engine.close()
		if closed then return; end
		closed = true;
		local by_store = open_engines[host];
		if by_store and engine.config and by_store[engine.config.archive_store] == engine then
			by_store[engine.config.archive_store] = nil;
		end
		local archive = engine.archive;
		if not archive then
			release();
			release_outputs();
			return remove_output_barrier();
		end
		-- What is held goes out once committed, as always; a resumed runner may queue
		-- and wait again, so a few rounds (blocking, as the close below does: the
		-- module is going away).
		for _ = 1, 3 do
			if held_first > held_last and next(held_out) == nil then break; end
			archive:flush(engine.config.commit_wait_limit);
			local upto = archive:stats().writes_committed;
			release(upto);
			release_outputs(upto);
		end
		engine.archive = nil;
		completion_watch:close();
		-- Log lines from the last moments of the threads (e.g. writes given up on).
		local last = archive:close();
		for i = 1, #last do
			module:log(last[i].level, "%s", last[i].log);
		end
		-- Whatever is still held could not be committed in time (logged above):
		-- it goes out now, each once.
		release();
		release_outputs();
		remove_output_barrier();
	end

	-- Replies the MAM hooks of both modules share.

	-- An expected failure as the error reply; unexpected ones are logged too.
	function engine.fail(origin, stanza, what, err)
		if err.condition == "internal-server-error" or not err.condition then
			module:log("error", "%s failed: %s", what, err.log);
		else
			module:log("debug", "%s rejected: %s", what, err.log);
		end
		origin.send(st.error_reply(stanza, err.type or "wait", err.condition or "internal-server-error", err.text));
		return true;
	end

	-- While the database cannot be opened, MAM requests get a temporary error.
	function engine.unavailable(origin, stanza)
		if engine.archive then return false; end
		origin.send(st.error_reply(stanza, "wait", "internal-server-error", "The archive is temporarily unavailable"));
		return true;
	end

	-- How a session's outgoing stanzas reach the wire. A stanzas/out filter (stream
	-- management, websocket framing, CSI buffering add one) needs stanza objects; a
	-- bytes/out filter sees each send, so it gets one stanza per send; a session with
	-- neither can be given a whole page in one send. The strings are what tostring()
	-- would write, serialised on a reader thread.
	local function output_form(session)
		local session_filters = session.filters;
		if not session_filters then return "joined"; end
		local stanzas_out, bytes_out = session_filters["stanzas/out"], session_filters["bytes/out"];
		-- The commit barriers' filters need no stanza objects: strings (query
		-- results, committed already) pass them untouched.
		if stanzas_out then
			for i = 1, #stanzas_out do
				if not hold_filters[stanzas_out[i]] then return "stanzas"; end
			end
		end
		if bytes_out and bytes_out[1] then return "strings"; end
		return "joined";
	end

	-- Whether a query's results for `session` are serialised on the reader thread.
	function engine.serialised_for(session)
		return output_form(session) ~= "stanzas";
	end

	-- A finished query's results, then the iq reply with the fin.
	function engine.send_page(session, page)
		local form = output_form(session);
		if form == "joined" then
			session.send(page:xml(true));
			return;
		end
		local replies = form == "strings" and page:xml() or page:stanzas();
		for i = 1, #replies do
			session.send(replies[i]);
		end
	end

	return engine;
end

-- The engine open on `on_host` for the archive store `store`, if any module opened one.
local function find_engine(on_host, store)
	local by_store = open_engines[on_host];
	return by_store and by_store[store] or nil;
end

return {
	load_native = load_native;
	open = open;
	find_engine = find_engine;
};
