-- prosody-mam-native: what to add to /etc/prosody/prosody.cfg.lua (the global
-- section, before any VirtualHost). Every option is stock mod_mam's; see the README
-- (/usr/share/doc/prosody-mam-native/README.md.gz) for all of them.

-- Where the Debian package puts the module. Prosody searches these folders before its
-- own modules, so this mod_mam replaces the stock one.
plugin_paths = { "/usr/lib/prosody-mam-native/modules" }
-- After `prosodyctl install prosody-mam-native-*.rock` nothing is needed here:
-- Prosody already searches <data_path>/custom_plugins.

modules_enabled = {
	-- … the modules you have already …
	"mam"; -- XEP-0313: Message Archive Management
}

-- Optional (these are the defaults):
-- archive_expires_after = "1w"        -- "never", "2 days", "3 months", "1y", …
-- max_archive_query_results = 50
-- default_archive_policy = true       -- or false, "roster"
-- The archive is <data_path>/mam_archive.sqlite; for PostgreSQL instead:
-- mam_sql = { driver = "PostgreSQL"; database = "prosody"; host = "localhost"; username = "prosody"; password = "secret" }

-- Room archives: the package's mod_muc_mam replaces the stock one the same way, on
-- the MUC component (stock's options; its archive is <data_path>/mam_muc_log.sqlite):
-- Component "rooms.example.com" "muc"
--     modules_enabled = { "muc_mam" }
--     muc_log_expires_after = "1w"
