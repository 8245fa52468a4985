//! SQLite schema and its append-only migrations (filled in by the store work).
