-- The native engine for this module on this host, as Prosody sees it: the library
-- (mam_native.so, found by path: no lua_cpath changes needed), the
-- archive handle (reopened in the background while the database cannot be opened),
-- the jobs whose results come back through a watched socket, expiry on its
-- schedule, and a close that commits every queued write. The module file only wires
-- Prosody's events to what start() returns.

local st = require "util.stanza";
local jid_prep = require "util.jid".prep;
local async = require "util.async";
local server = require "net.server";
local time_now = require "util.time".monotonic or require "util.time".now;
local add_task = require "util.timer".add_task;

local host = module.host;

-- Seconds between attempts to open a database that could not be opened.
local open_retry_interval = 5;

-- Where mam_native.so is: beside this file (make plugin, the Debian package); else
-- where LuaRocks put it, <tree>/lib/lua/<version>/ for a module in
-- <tree>/share/lua/<version>/mod_mam/ (Prosody 13's `prosodyctl install` does not add
-- that directory to package.cpath, so it is found by path); else on package.cpath.
local function native_library_path()
	local dir = module:get_directory();
	local candidates = { dir .. "/mam_native.so" };
	local tree, lua_version = dir:match("^(.*)/share/lua/([^/]+)/mod_mam/*$");
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
local function open(native)
	local engine = {};
	local metrics;

	-- Every option is read here and validated once, in Rust.
	local options = {};
	for _, name in ipairs(native.option_names) do
		options[name] = module:get_option(name);
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
		};
	end

	local first_handle, first_err = open_handle();
	if not first_handle and first_err.config then
		module:log("error", "%s", first_err.log);
		error("mod_mam: " .. first_err.log);
	end

	-- Deliveries held in their session's runner until the archive rows they carry are
	-- committed (mam_commit_before_delivery, docs/durability.md): a queue in write
	-- order, as three parallel arrays so holding a message allocates no table.
	local held_seq, held_resume, held_since, held_origin = {}, {}, {}, {};
	local held_first, held_last = 1, 0;
	-- While commits lag past mam_commit_wait_limit: { since =, upto = (newest write
	-- delivered before its commit), delivered = count }; deliveries go out at once
	-- until the writer reports `upto` committed.
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

	local function committed(upto)
		release(upto);
		if outage and upto >= outage.upto then
			module:log("info", "Archive commits caught up after %.1f s; %d deliveries went out before their commit meanwhile",
				time_now() - outage.since, outage.delivered);
			outage = nil;
		end
	end

	-- Storage that takes longer than the limit to commit (failing, locked, too slow)
	-- must not stop delivery: the held messages go out, still queued for the archive.
	local function watchdog()
		if held_first > held_last or outage then
			watchdog_armed = false;
			return;
		end
		local limit = engine.config.commit_wait_limit;
		local waited = time_now() - held_since[held_first];
		if waited < limit then return limit - waited; end
		local count = held_last - held_first + 1;
		outage = { since = time_now(); upto = held_seq[held_last]; delivered = count };
		module:log("error", "Archive commits are taking longer than %g s: delivering messages before their commit "
			.. "until the archive catches up (they stay queued for it; %d held messages released)", limit, count);
		metrics.delivered_uncommitted["storage slow"]:add(count);
		watchdog_armed = false;
		release();
	end

	-- Whether this message's delivery will wait for its commit: the option is on and
	-- the stanza is being processed in a session's async runner (c2s, s2s, BOSH,
	-- websocket), where waiting holds that session's stanzas and not the server.
	-- Elsewhere (components, messages the server makes itself) it goes out at once.
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
			outage.upto, outage.delivered = seq, outage.delivered + 1;
			metrics.delivered_uncommitted["storage slow"]:add(1);
			return;
		end
		local wait, done = async.waiter();
		held_last = held_last + 1;
		held_seq[held_last], held_resume[held_last], held_since[held_last], held_origin[held_last] = seq, done, time_now(), origin;
		if origin then holds[origin] = (holds[origin] or 0) + 1; end
		if not watchdog_armed then
			watchdog_armed = true;
			module:add_timer(engine.config.commit_wait_limit, watchdog);
		end
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
		local archive = engine.archive;
		if not archive then return release(); end
		-- Held deliveries go out once committed, as always: resumed, a sender's copy
		-- goes on to the recipient's archive and is held again, so a few rounds
		-- (blocking, as the close below does: the module is going away).
		for _ = 1, 3 do
			if held_first > held_last then break; end
			archive:flush(engine.config.commit_wait_limit);
			release(archive:stats().writes_committed);
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
	end

	return engine;
end

return {
	load_native = load_native;
	open = open;
};
