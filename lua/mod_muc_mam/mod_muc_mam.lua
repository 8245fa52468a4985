-- prosody-mam-native: room archives (XEP-0313 on a MUC component) on the native engine.
--
-- This file only wires Prosody's MUC events to the engine that mod_mam uses too
-- (mamengine.lib.lua, installed beside this file by `make plugin` and the packages).

local host = module.host;

local engine_lib = module:require "mamengine";
local native = engine_lib.load_native();

-- Under prosodyctl (`prosodyctl mod_muc_mam <command>`) the module is loaded on "*"
-- only to run an admin command: no events, no archive of its own.
if host == "*" then
	module.command = module:require "mamcommands" (native, { owners = "rooms" });
	return;
end

error("mod_muc_mam: room archives are not wired yet");
