//! The SQLite backend (filled in by the store work).
