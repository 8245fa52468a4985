-- prosody-mam-native: the native archive engine as a Prosody storage provider for
-- archive stores, so other modules (moderation tombstones through get/set, web log
-- viewers, prosody-migrator) read and write the same archive our mod_mam and
-- mod_muc_mam keep:
--
--   storage = { archive = "mam_native" }   -- VirtualHost: personal archives
--   storage = { muc_log = "mam_native" }   -- MUC component: room archives
--
-- Only archive stores the engine keeps are served: the host's `archive_store`
-- (default "archive") and "muc_log"; anything else answers "unsupported-store"
-- (docs/storage-provider.md). Every call goes to the engine's threads: inside an
-- async runner the caller waits there without holding Prosody's loop; outside one
-- (and in prosody-migrator, which has no running loop) it blocks, up to a bound.

local st = require "util.stanza";
local async = require "util.async";

local engine_lib = module:require "mamengine";
local native = engine_lib.load_native();
local store_api = native.store;

local host = module.host;

-- Longest a caller inside an async runner waits for an answer (seconds); the
-- runner waits, the server goes on.
local runner_wait_limit = 30;
-- Longest a caller outside a runner, or prosody-migrator, blocks Prosody's thread
-- for an answer (seconds): only reached while storage is failing or locked.
local blocking_wait_limit = 5;

-- Prosody 0.12 keeps archive times as whole seconds (its util.datetime formats
-- integers only); 13 as fractions. Items carry what the running version expects.
local whole_seconds = (prosody.version or ""):match("^0%.") ~= nil;
-- Only the running server has a loop to wait on; the migrator and prosodyctl block.
local in_server = prosody.process_type == "prosody";

local function seconds(us)
	if whole_seconds then return us // 1000000; end
	return us / 1e6;
end

-- Metrics of an engine this module opens itself: none (it archives nothing of its
-- own; expiry and the delivery barrier are off).
local no_metric = {};
function no_metric.add() end
function no_metric.sample() end
setmetatable(no_metric, { __index = function () return no_metric; end });

-- Engines this module opened itself, by store, for hosts where none of our modules
-- has one open.
local own_engines = {};

local function close_own(store)
	local engine = own_engines[store];
	if engine then
		own_engines[store] = nil;
		engine.close();
	end
end

-- The engine for `store` on this host: the one mod_mam or mod_muc_mam opened, so a
-- database is never opened twice; else one of our own (closed again as soon as one
-- of theirs appears).
local function engine_for(store)
	local theirs = engine_lib.find_engine(host, store);
	local own = own_engines[store];
	if theirs and theirs ~= own then
		if own then
			module:log("debug", "Using the engine another module opened for store %s", store);
			close_own(store);
		end
		if theirs.archive then return theirs; end
		return nil, "archive database unavailable";
	end
	if not own then
		module:log("debug", "No engine of our modules is open on this host: opening one for store %s", store);
		own = engine_lib.open(native, {
			owners = store == "muc_log" and "rooms" or "accounts";
			options = {
				archive_store = store;
				-- Stock drivers never expire or hold deliveries; the modules do.
				archive_expires_after = "never";
				muc_log_expires_after = "never";
				mam_commit_before_delivery = false;
			};
		});
		own.run(no_metric);
		own_engines[store] = own;
	end
	if own.archive then return own; end
	return nil, "archive database unavailable";
end

-- The completion of `job`, or nil after the wait limit.
local function await(engine, job)
	local archive = engine.archive;
	if in_server and async.ready() then
		local c = archive:answer_now(job);
		if c then return c; end
		local wait, done = async.waiter();
		local result, finished = nil, false;
		local function finish(c)
			if finished then return; end
			finished, result = true, c;
			done();
		end
		local timer = module:add_timer(runner_wait_limit, function ()
			engine.on_done(job, nil);
			finish(nil);
		end);
		engine.on_done(job, finish);
		wait();
		timer:stop();
		return result;
	end
	return store_api.wait(archive, job, blocking_wait_limit);
end

-- A failed job's error as a string, logged (stock drivers return strings).
local function failed(what, err)
	local text = type(err) == "table" and (err.log or err.condition) or tostring(err);
	module:log("error", "Archive store %s failed: %s", what, text);
	return nil, text;
end

-- Runs one store call: `submit(archive)` queues it, the answer is the completion.
local function call(self, what, submit)
	local engine, err = engine_for(self.store);
	if not engine then return failed(what, err); end
	local job, refusal = submit(engine.archive);
	if not job then
		if type(refusal) == "string" then return nil, refusal; end
		return failed(what, refusal);
	end
	local c = await(engine, job);
	if not c then
		return failed(what, ("no answer within the wait limit (%s)"):format(
			(in_server and async.ready()) and runner_wait_limit or blocking_wait_limit));
	end
	if c.err then return failed(what, c.err); end
	if c.refused then return nil, c.refused; end
	return c;
end

-- A copy of a query with what the engine needs added (stock callers may reuse
-- their query table, so it is never changed).
local function engine_query(query)
	local q = {};
	for k, v in pairs(query or {}) do q[k] = v; end
	q.whole_seconds = whole_seconds;
	return q;
end

local archive_store = {};
local archive_mt = { __index = archive_store };

function archive_store:append(username, key, value, when, with)
	if not st.is_stanza(value) then
		return nil, "unsupported-datatype";
	end
	local c, err = call(self, "append", function (archive)
		return store_api.append(archive, username, key, value, when, with);
	end);
	if not c then return nil, err; end
	return c.key;
end

function archive_store:find(username, query)
	local c, err = call(self, "find", function (archive)
		return store_api.find(archive, username, engine_query(query));
	end);
	if not c then return nil, err; end
	local items, i = c.items, 0;
	return function ()
		i = i + 1;
		local item = items[i];
		if not item then return nil; end
		items[i] = nil;
		return item.key, item.stanza, seconds(item.when_us), item.with;
	end, c.total;
end

function archive_store:get(username, key)
	local iter, err = self:find(username, { key = key; limit = 1 });
	if not iter then return nil, err; end
	for _, stanza, when, with in iter do
		return stanza, when, with;
	end
	return nil, "item-not-found";
end

function archive_store:set(username, key, new_value, new_when, new_with)
	if new_value ~= nil and not st.is_stanza(new_value) then
		return nil, "unsupported-datatype";
	end
	local c, err = call(self, "set", function (archive)
		return store_api.set(archive, username, key, new_value, new_when, new_with);
	end);
	if not c then return nil, err; end
	return true;
end

function archive_store:summary(username, query)
	local c, err = call(self, "summary", function (archive)
		return store_api.summary(archive, username, engine_query(query));
	end);
	if not c then return nil, err; end
	local earliest, latest = {}, {};
	for with, us in pairs(c.earliest_us) do earliest[with] = seconds(us); end
	for with, us in pairs(c.latest_us) do latest[with] = seconds(us); end
	return { counts = c.counts; earliest = earliest; latest = latest; body = c.body };
end

function archive_store:delete(username, query)
	local c, err = call(self, "delete", function (archive)
		return store_api.delete(archive, username, engine_query(query));
	end);
	if not c then return nil, err; end
	return c.deleted;
end

function archive_store:users()
	local c, err = call(self, "users", function (archive)
		return store_api.users(archive);
	end);
	if not c then error("mod_storage_mam_native: users() failed: " .. tostring(err)); end
	local users, i = c.users, 0;
	return function ()
		i = i + 1;
		return users[i];
	end;
end

local driver = {};

-- The archive stores the engine keeps; anything else is refused, so Prosody sends
-- it to another driver (or, named here by mistake, to its null driver).
local function served(store)
	return store == "muc_log" or store == (module:get_option_string("archive_store", "archive"));
end

function driver:open(store, typ) -- luacheck: ignore 212/self
	if typ ~= "archive" or not served(store) then
		return nil, "unsupported-store";
	end
	-- The engine is found (or opened) at the first call, not here: a module opening
	-- the store while Prosody loads may come before the module whose engine to share.
	-- `quota` is the engine's storage_archive_item_limit, so it is looked up then too.
	local caps = setmetatable({
		total = true;
		truncate = true;
		full_id_range = true;
		ids = true;
		wildcard_delete = true;
	}, {
		__index = function (_, cap)
			if cap ~= "quota" then return nil; end
			local engine = engine_for(store);
			return engine and engine.config.item_limit or nil;
		end;
	});
	return setmetatable({ store = store; type = typ; caps = caps }, archive_mt);
end

module:provides("storage", driver);

local function close_all()
	for store in pairs(own_engines) do close_own(store); end
end
module:hook_global("server-stopped", close_all);

function module.unload()
	close_all();
end
