//! Native engine for Prosody's XEP-0313 Message Archive Management module.

pub mod error;
pub mod id;
pub mod lua_api;
pub mod ns;
pub mod policy;
pub mod stanza;
pub mod store;
pub mod time;
