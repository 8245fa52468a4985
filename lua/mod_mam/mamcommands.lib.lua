-- prosodyctl mod_mam <command>: the operator's commands (import, expire, delete,
-- export, stats).
--
-- prosodyctl loads mod_mam on the pseudo-host "*" and calls module.command(arg).
-- This file does the Prosody-side work only: which hosts, their options, reading the
-- stock archive through Prosody's own storage drivers. Parsing, storage, progress,
-- verification and formatting live in the native library (src/admin.rs,
-- src/import.rs; src/archive_copy.rs reads this module's own archives for
-- `import --from mam-sqlite|mam-postgres`). Exit codes: 0 done, 1 failed, 2 usage
-- error.

local configmanager = require "core.configmanager";
local modulemanager = require "core.modulemanager";
local jid_prep = require "util.jid".prep;
local time_now = require "util.time".now;
local resolve_relative_path = require "util.paths".resolve_relative_path;
local math_max = math.max;

local import_batch_size = 500;
local progress_every = 2; -- seconds between progress lines

local function say(fmt, ...)
	io.stdout:write(fmt:format(...), "\n");
	io.stdout:flush();
end

local function complain(fmt, ...)
	io.stderr:write(fmt:format(...), "\n");
	io.stderr:flush();
end

-- The VirtualHosts of the configuration (not components, not "*"), sorted.
local function virtual_hosts()
	local list = {};
	for host in pairs(prosody.hosts) do
		if host ~= "*" and not configmanager.get(host, "component_module") then
			list[#list + 1] = host;
		end
	end
	table.sort(list);
	return list;
end

-- The hosts a command applies to: the one asked for, or all VirtualHosts.
local function target_hosts(only)
	local all = virtual_hosts();
	if not only then return all; end
	for _, host in ipairs(all) do
		if host == only then return { host }; end
	end
	return nil, ("Host '%s' is not a VirtualHost in the configuration"):format(only);
end

-- mod_storage_sql drops `false` values when it reads a keyval store back, which loses
-- stock's `never` rules (`["jid"] = false`, one row each). Read those rows directly,
-- with the connection parameters mod_storage_sql itself uses.
local function sql_never_rules(host, store)
	local sql = require "util.sql";
	local params = configmanager.get(host, "sql") or { driver = "SQLite3" };
	local p = {
		driver = params.driver; database = params.database;
		username = params.username; password = params.password;
		host = params.host; port = params.port;
	};
	if p.driver == "SQLite3" and p.database ~= ":memory:" then
		p.database = resolve_relative_path(prosody.paths.data or ".", p.database or "prosody.sqlite");
	end
	local engine = sql:create_engine(p);
	local rules = {};
	local ok, err = engine:transaction(function ()
		for row in engine:select([[SELECT "user", "key" FROM "prosody"
			WHERE "host"=? AND "store"=? AND "type"=? AND "value"=?]], host, store, "boolean", "false") do
			rules[row[1]] = rules[row[1]] or {};
			rules[row[1]][row[2]] = false;
		end
	end);
	if not ok then return nil, err; end
	return rules;
end

return function (native)
	local admin = native.admin;

	local function open_archive(host)
		local options = {};
		for _, name in ipairs(native.option_names) do
			options[name] = configmanager.get(host, name);
		end
		return admin.open { host = host; data_path = prosody.paths.data; options = options };
	end

	-- The storage driver name the `storage` option gives a store (as storagemanager
	-- decides, which prosodyctl cannot ask it since hosts are not activated).
	local function configured_driver(host, store)
		local storage = configmanager.get(host, "storage");
		local name;
		if type(storage) == "string" then
			name = storage;
		elseif type(storage) == "table" then
			name = storage[store];
		end
		name = name or configmanager.get(host, "default_storage") or "internal";
		if name == "sql2" then name = "sql"; end
		return name;
	end

	-- Loads mod_storage_<name> on the host and returns the driver it provides.
	local function load_driver(host, name)
		local module_name = "storage_" .. name;
		if not modulemanager.is_loaded(host, module_name) then
			local ok, err = modulemanager.load(host, module_name);
			if not ok then
				return nil, ("could not load mod_%s on %s: %s"):format(module_name, host, tostring(err));
			end
		end
		local mod = modulemanager.get_module(host, module_name);
		local items = mod and mod.module.items and mod.module.items["storage-provider"];
		local driver = items and items[1];
		if not driver then
			return nil, ("mod_%s on %s provides no storage driver"):format(module_name, host);
		end
		return driver;
	end

	local function import_host(host, cmd)
		local archive, err = open_archive(host);
		if not archive then complain("%s", err); return 1; end
		local store = cmd.store or archive:config().archive_store;
		local driver_name = cmd.from or configured_driver(host, store);
		local driver, derr = load_driver(host, driver_name);
		if not driver then complain("%s", derr); return 1; end
		local source, serr = driver:open(store, "archive");
		if not source or not source.find or not source.users then
			complain("%s: the %s driver has no archive store '%s': %s", host, driver_name, store, tostring(serr));
			return 1;
		end
		local prefs_source = driver:open(store .. "_prefs");
		local never_rules = {};
		if driver_name == "sql" then
			local rules, rerr = sql_never_rules(host, store .. "_prefs");
			if not rules then complain("%s: could not read never rules: %s", host, tostring(rerr)); return 1; end
			never_rules = rules;
		end

		local users, seen = {}, {};
		local function add_user(user)
			if user and not seen[user] then seen[user] = true; users[#users + 1] = user; end
		end
		for user in source:users() do add_user(user); end
		if prefs_source and prefs_source.users then
			for user in prefs_source:users() do add_user(user); end
		end
		table.sort(users);

		-- Count first, for the ETA.
		local expected = 0;
		for _, user in ipairs(users) do
			local _, total = source:find(user, { limit = 0; total = true });
			expected = expected + (tonumber(total) or 0);
		end
		say("Importing %d messages of %d users on %s from %s store '%s' into %s",
			expected, #users, host, driver_name, store, archive:config().storage);
		assert(archive:import_begin(expected));

		local last_progress = time_now();
		local prefs_imported = 0;
		for _, user in ipairs(users) do
			archive:import_user(user);
			local iter, ferr = source:find(user, {});
			if not iter then
				complain("%s: could not read the archive of %s: %s", host, user, tostring(ferr));
				return 1;
			end
			local batch = {};
			local function flush()
				if #batch == 0 then return true; end
				local ok, ierr = archive:import_batch(user, batch);
				if not ok then complain("%s: %s", host, ierr); return false; end
				batch = {};
				if time_now() - last_progress >= progress_every then
					last_progress = time_now();
					say("  %s", archive:import_progress());
				end
				return true;
			end
			for id, stanza, when, with in iter do
				batch[#batch + 1] = { id = id; stanza = stanza; when = when; with = with };
				if #batch >= import_batch_size and not flush() then return 1; end
			end
			if not flush() then return 1; end
			local prefs = prefs_source and prefs_source:get(user);
			if type(prefs) == "table" then
				for jid, rule in pairs(never_rules[user] or {}) do
					if prefs[jid] == nil then prefs[jid] = rule; end
				end
				local stored, perr = archive:import_prefs(user, prefs);
				if stored == nil then complain("%s: %s", host, perr); return 1; end
				if stored then prefs_imported = prefs_imported + 1; end
			end
		end
		say("  %s", archive:import_progress());
		say("Preferences: %d imported (users who already had preferences here keep them)", prefs_imported);
		local lines, all_ok = archive:import_verify();
		if not lines then complain("%s: verification failed: %s", host, all_ok); return 1; end
		say("Verification for %s:", host);
		for _, line in ipairs(lines) do say("  %s", line); end
		if not all_ok then
			complain("%s: some messages were not imported (see MISMATCH above)", host);
			return 1;
		end
		return 0;
	end

	-- import --from mam-sqlite|mam-postgres: another archive of this module, read and
	-- written by the engine; this only prints what it says.
	local function copy_host(host, cmd)
		local archive, err = open_archive(host);
		if not archive then complain("%s", err); return 1; end
		local verified, cerr, code = archive:copy_from(cmd.from, cmd.source, function (line)
			say("%s", line);
		end);
		if verified == nil then
			complain("%s: %s", host, cerr);
			return code or 1;
		end
		if not verified then
			complain("%s: some messages were not imported (see MISMATCH above)", host);
			return 1;
		end
		return 0;
	end

	local commands = {};

	function commands.import(cmd)
		local hosts, err = target_hosts(cmd.host);
		if not hosts then complain("%s", err); return 1; end
		local import = cmd.ours and copy_host or import_host;
		local status = 0;
		for _, host in ipairs(hosts) do
			-- A usage error (2) outranks a failure (1).
			status = math_max(status, import(host, cmd));
		end
		return status;
	end

	function commands.expire(cmd)
		local hosts, err = target_hosts(cmd.host);
		if not hosts then complain("%s", err); return 1; end
		for _, host in ipairs(hosts) do
			local archive, oerr = open_archive(host);
			if not archive then complain("%s", oerr); return 1; end
			if not archive:config().expires_after then
				say("%s: archive_expires_after is \"never\": nothing to expire", host);
			else
				local deleted, eerr = archive:expire();
				if not deleted then complain("%s: expiry failed: %s", host, eerr); return 1; end
				say("%s: deleted %d expired messages", host, deleted);
			end
		end
		return 0;
	end

	local function owner_archive(cmd)
		local hosts, err = target_hosts(cmd.host);
		if not hosts then return nil, err; end
		return open_archive(cmd.host);
	end

	function commands.delete(cmd)
		local archive, err = owner_archive(cmd);
		if not archive then complain("%s", err); return 1; end
		local deleted, derr = archive:delete(cmd.user, cmd.with, cmd.before);
		if not deleted then complain("%s@%s: delete failed: %s", cmd.user, cmd.host, derr); return 1; end
		say("%s@%s: deleted %d messages", cmd.user, cmd.host, deleted);
		return 0;
	end

	function commands.export(cmd)
		local archive, err = owner_archive(cmd);
		if not archive then complain("%s", err); return 1; end
		local count, eerr = archive:export(cmd.user, cmd.format, function (chunk)
			assert(io.stdout:write(chunk));
		end);
		io.stdout:flush();
		if not count then complain("%s@%s: export failed: %s", cmd.user, cmd.host, eerr); return 1; end
		complain("%s@%s: exported %d messages", cmd.user, cmd.host, count);
		return 0;
	end

	function commands.stats(cmd)
		local hosts, err = target_hosts(cmd.host);
		if not hosts then complain("%s", err); return 1; end
		for _, host in ipairs(hosts) do
			local archive, oerr = open_archive(host);
			if not archive then complain("%s", oerr); return 1; end
			local report, serr = archive:stats();
			if not report then complain("%s: %s", host, serr); return 1; end
			io.stdout:write(report);
		end
		io.stdout:flush();
		return 0;
	end

	-- module.command: returns the exit code (prosodyctl exits with it).
	return function (arg)
		local cmd, err, code = admin.parse(arg, jid_prep);
		if not cmd then
			complain("%s", err);
			return code;
		end
		if cmd.command == "help" then
			say("%s", cmd.text);
			return 0;
		end
		return commands[cmd.command](cmd);
	end;
end
