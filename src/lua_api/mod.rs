pub mod stanza_lua;
