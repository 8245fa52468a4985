-- prosodyctl mod_mam <command>: the operator's commands (import, expire, delete,
-- export, stats, version); and prosodyctl mod_muc_mam <command>, the same for room
-- archives (mod_muc_mam loads this file with { owners = "rooms" }).
--
-- prosodyctl loads the module on the pseudo-host "*" and calls module.command(arg).
-- This file does the Prosody-side work only: which hosts, their options, opening the
-- stock archive through Prosody's own storage drivers. Parsing, storage, the import
-- itself, progress, verification and formatting live in the native library
-- (src/admin/). Exit codes: 0 done, 1 failed, 2 usage error.

local configmanager = require "core.configmanager";
local modulemanager = require "core.modulemanager";
local jid_prep = require "util.jid".prep;
local resolve_relative_path = require "util.paths".resolve_relative_path;
local math_max = math.max;

local function say(fmt, ...)
	io.stdout:write(fmt:format(...), "\n");
	io.stdout:flush();
end

local function complain(fmt, ...)
	io.stderr:write(fmt:format(...), "\n");
	io.stderr:flush();
end

-- mod_storage_sql drops `false` values when it reads a keyval store back, which loses
-- stock's `never` rules (`["jid"] = false`, one row each). Read those rows directly,
-- with the connection parameters mod_storage_sql itself uses, through Prosody's own
-- SQL layer: it speaks every driver stock can store in (SQLite3, PostgreSQL and
-- MySQL through LuaDBI), which the native library cannot all reach.
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

-- opts.owners: "accounts" (mod_mam, the default) or "rooms" (mod_muc_mam).
return function (native, opts)
	local admin = native.admin;
	local owners = opts and opts.owners or "accounts";
	local rooms = owners == "rooms";

	-- The hosts this module's commands are about, sorted: the VirtualHosts (not
	-- components, not "*"), or for rooms the MUC components.
	local function own_hosts()
		local list = {};
		for host in pairs(prosody.hosts) do
			local component = configmanager.get(host, "component_module");
			if host ~= "*" and ((rooms and component == "muc") or (not rooms and not component)) then
				list[#list + 1] = host;
			end
		end
		table.sort(list);
		return list;
	end

	-- The hosts a command applies to: the one asked for, or all of them.
	local function target_hosts(only)
		local all = own_hosts();
		if not only then return all; end
		for _, host in ipairs(all) do
			if host == only then return { host }; end
		end
		local kind = rooms and "a MUC component" or "a VirtualHost";
		return nil, ("Host '%s' is not %s in the configuration"):format(only, kind);
	end

	-- The options the live module would read on the host (global ones included).
	local function open_archive(host)
		local options = {};
		for _, name in ipairs(native.option_names) do
			options[name] = configmanager.get(host, name);
		end
		return admin.open { host = host; data_path = prosody.paths.data; options = options; owners = owners };
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

	-- The stock archive as the native import reads it (see StockArchive in
	-- src/admin/import.rs): each function answers its value, or nil and the error.
	local function stock_source(host, driver_name, driver, store)
		local source, serr = driver:open(store, "archive");
		if not source or not source.find or not source.users then
			return nil, ("%s: the %s driver has no archive store '%s': %s"):format(host, driver_name, store, tostring(serr));
		end
		-- Rooms have no archiving preferences.
		local prefs_source = not rooms and driver:open(store .. "_prefs") or nil;
		local never_rules = {};
		if driver_name == "sql" and not rooms then
			local rules, rerr = sql_never_rules(host, store .. "_prefs");
			if not rules then return nil, ("%s: could not read never rules: %s"):format(host, tostring(rerr)); end
			never_rules = rules;
		end
		return {
			describe = ("%s store '%s'"):format(driver_name, store);
			users = function ()
				local users = {};
				for user in source:users() do users[#users + 1] = user; end
				if prefs_source and prefs_source.users then
					for user in prefs_source:users() do users[#users + 1] = user; end
				end
				return users;
			end;
			count = function (user)
				local iter, total = source:find(user, { limit = 0; total = true });
				if not iter then return nil, total; end
				if total then return tonumber(total); end
				-- Prosody 13's internal store answers no total for a non-empty
				-- archive: count the items.
				local all, err = source:find(user, {});
				if not all then return nil, err; end
				local n = 0;
				for _ in all do n = n + 1; end
				return n;
			end;
			find = function (user)
				return source:find(user, {});
			end;
			prefs = function (user)
				local prefs = prefs_source and prefs_source:get(user);
				if type(prefs) ~= "table" then return nil; end
				for jid, rule in pairs(never_rules[user] or {}) do
					if prefs[jid] == nil then prefs[jid] = rule; end
				end
				return prefs;
			end;
		};
	end

	-- Prosody's SQLite store encrypted with SQLCipher (13: `sql.password` on driver
	-- SQLite3): read natively, since Prosody's LuaDBI driver has no SQLCipher here.
	local function encrypted_sqlite_store(host)
		local params = configmanager.get(host, "sql");
		if type(params) == "table" and params.driver == "SQLite3" and params.password then
			return params;
		end
	end

	local function import_host(host, cmd)
		local archive, err = open_archive(host);
		if not archive then complain("%s", err.log); return err.code; end
		local store = cmd.store or archive:config().archive_store;
		local driver_name = cmd.from or configured_driver(host, store);
		local encrypted = driver_name == "sql" and encrypted_sqlite_store(host);
		if encrypted then
			local ok, ierr = archive:import_stock_sqlite {
				database = encrypted.database or "prosody.sqlite";
				password = tostring(encrypted.password);
				store = store;
				say = function (line) say("%s", line); end;
			};
			if not ok then complain("%s", ierr.log); return ierr.code; end
			return 0;
		end
		local driver, derr = load_driver(host, driver_name);
		if not driver then complain("%s", derr); return 1; end
		local source, serr = stock_source(host, driver_name, driver, store);
		if not source then complain("%s", serr); return 1; end
		local ok, ierr = archive:import_stock(source, function (line) say("%s", line); end);
		if not ok then complain("%s", ierr.log); return ierr.code; end
		return 0;
	end

	-- import --from mam-sqlite|mam-postgres: another archive of this module, read and
	-- written by the engine; this only prints what it says.
	local function copy_host(host, cmd)
		local archive, err = open_archive(host);
		if not archive then complain("%s", err.log); return err.code; end
		local verified, cerr = archive:copy_from {
			from = cmd.from;
			source = cmd.source;
			say = function (line) say("%s", line); end;
		};
		if verified == nil then
			complain("%s: %s", host, cerr.log);
			return cerr.code;
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
			if not archive then complain("%s", oerr.log); return oerr.code; end
			local config = archive:config();
			if not config.expires_after then
				say("%s: %s is \"never\": nothing to expire", host, config.expires_option);
			else
				local deleted, eerr = archive:expire();
				if not deleted then complain("%s: expiry failed: %s", host, eerr.log); return eerr.code; end
				say("%s: deleted %d expired messages", host, deleted);
			end
		end
		return 0;
	end

	local function owner_archive(cmd)
		local hosts, err = target_hosts(cmd.host);
		if not hosts then complain("%s", err); return nil, 1; end
		local archive, oerr = open_archive(cmd.host);
		if not archive then complain("%s", oerr.log); return nil, oerr.code; end
		return archive;
	end

	function commands.delete(cmd)
		local archive, code = owner_archive(cmd);
		if not archive then return code; end
		local deleted, derr = archive:delete { user = cmd.user; with = cmd.with; before = cmd.before };
		if not deleted then complain("%s@%s: delete failed: %s", cmd.user, cmd.host, derr.log); return derr.code; end
		say("%s@%s: deleted %d messages", cmd.user, cmd.host, deleted);
		return 0;
	end

	function commands.export(cmd)
		local archive, code = owner_archive(cmd);
		if not archive then return code; end
		local count, eerr = archive:export {
			user = cmd.user;
			format = cmd.format;
			write = function (chunk) assert(io.stdout:write(chunk)); end;
		};
		io.stdout:flush();
		if not count then complain("%s@%s: export failed: %s", cmd.user, cmd.host, eerr.log); return eerr.code; end
		complain("%s@%s: exported %d messages", cmd.user, cmd.host, count);
		return 0;
	end

	function commands.stats(cmd)
		local hosts, err = target_hosts(cmd.host);
		if not hosts then complain("%s", err); return 1; end
		for _, host in ipairs(hosts) do
			local archive, oerr = open_archive(host);
			if not archive then complain("%s", oerr.log); return oerr.code; end
			local report, serr = archive:stats();
			if not report then complain("%s: %s", host, serr.log); return serr.code; end
			io.stdout:write(report);
		end
		io.stdout:flush();
		return 0;
	end

	function commands.version()
		say("prosody-mam-native %s", native.version);
		say("native library: %s", native.library_path);
		return 0;
	end

	-- module.command: returns the exit code (prosodyctl exits with it).
	return function (arg)
		-- A room named without its host is on the only MUC component, if there is one.
		local hosts = own_hosts();
		local only_host = rooms and #hosts == 1 and hosts[1] or nil;
		local cmd, err = admin.parse(arg, jid_prep, { owners = owners; only_host = only_host });
		if not cmd then
			complain("%s", err.log);
			return err.code;
		end
		if cmd.command == "help" then
			say("%s", cmd.text);
			return 0;
		end
		return commands[cmd.command](cmd);
	end;
end
