//! The three write policies in front of a real database: SQLite (bundled by
//! rusqlite) as the system of record of a table `users(id, name)`.
//!
//! ```text
//! cargo run --release --example sqlite              # a fresh database in the temp dir
//! cargo run --release --example sqlite -- users.db  # or one of your own
//! ```
//!
//! `tests/sqlite.rs` runs the same code against a temporary database.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use larder::{Cache, Op, Store, WriteBack};
use rusqlite::{params, Connection, OptionalExtension};

/// A SQLite table as a [`Store`]: one connection behind a mutex, each batch
/// in one transaction (so a failed batch applies nothing and is retried whole).
pub(crate) struct Users {
    db: Mutex<Connection>,
    /// Calls of `write` / `write_batch`: what the policies cost the database.
    pub(crate) write_calls: AtomicU64,
    /// Calls of `load`.
    pub(crate) loads: AtomicU64,
}

impl Users {
    /// Opens (or creates) the database at `path` with its `users` table.
    pub(crate) fn open(path: &Path) -> rusqlite::Result<Self> {
        let db = Connection::open(path)?;
        db.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, name TEXT NOT NULL);",
        )?;
        Ok(Self {
            db: Mutex::new(db),
            write_calls: AtomicU64::new(0),
            loads: AtomicU64::new(0),
        })
    }

    /// A row as the database holds it, bypassing every cache.
    pub(crate) fn row(&self, id: u64) -> rusqlite::Result<Option<String>> {
        let db = self.db.lock().unwrap_or_else(|e| e.into_inner());
        db.query_row("SELECT name FROM users WHERE id = ?1", [id as i64], |r| {
            r.get(0)
        })
        .optional()
    }

    /// Rows in the table.
    pub(crate) fn count(&self) -> rusqlite::Result<u64> {
        let db = self.db.lock().unwrap_or_else(|e| e.into_inner());
        db.query_row("SELECT COUNT(*) FROM users", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
    }
}

impl Store<u64, String> for Users {
    type Error = rusqlite::Error;

    fn load(&self, id: &u64) -> rusqlite::Result<Option<String>> {
        self.loads.fetch_add(1, Ordering::Relaxed);
        self.row(*id)
    }

    fn write(&self, op: &Op<u64, String>) -> rusqlite::Result<()> {
        self.write_batch(std::slice::from_ref(op))
    }

    fn write_batch(&self, ops: &[Op<u64, String>]) -> rusqlite::Result<()> {
        self.write_calls.fetch_add(1, Ordering::Relaxed);
        let mut db = self.db.lock().unwrap_or_else(|e| e.into_inner());
        let tx = db.transaction()?;
        {
            let mut put = tx.prepare_cached(
                "INSERT INTO users (id, name) VALUES (?1, ?2)
                 ON CONFLICT(id) DO UPDATE SET name = excluded.name",
            )?;
            let mut delete = tx.prepare_cached("DELETE FROM users WHERE id = ?1")?;
            for op in ops {
                match op {
                    Op::Put(id, name) => put.execute(params![*id as i64, name])?,
                    Op::Delete(id) => delete.execute([*id as i64])?,
                };
            }
        }
        tx.commit()
    }
}

/// What one run did, for the caller to print or check.
#[derive(Debug, Default)]
pub(crate) struct Summary {
    /// Read-through: `get`s of 1,000 ids, 100 distinct.
    pub(crate) read_gets: u64,
    /// The loads they cost the database.
    pub(crate) read_loads: u64,
    /// Write-through: puts, and database write calls they cost.
    pub(crate) through_puts: u64,
    pub(crate) through_calls: u64,
    /// Write-back: puts and deletes, and database write calls they cost.
    pub(crate) back_writes: u64,
    pub(crate) back_calls: u64,
    /// Rows in the table at the end.
    pub(crate) rows: u64,
}

/// Runs the three policies against the database at `path`, checking what the
/// database holds after each.
pub(crate) fn run(path: &Path) -> Result<Summary, Box<dyn Error>> {
    let mut summary = Summary::default();

    // Seed 100 users straight into the database.
    let seed = Users::open(path)?;
    seed.write_batch(
        &(0..100)
            .map(|id| Op::Put(id, format!("user {id}")))
            .collect::<Vec<_>>(),
    )?;
    drop(seed);

    // Read-through: the application reads through the cache and writes the
    // database itself; `delete` drops a stale copy.
    let users = Cache::builder()
        .max_capacity(1_000)
        .read_through(Users::open(path)?)
        .build()?;
    for i in 0..1_000u64 {
        let name = users.get(&(i % 100))?;
        assert_eq!(name, Some(format!("user {}", i % 100)));
        summary.read_gets += 1;
    }
    assert_eq!(users.get(&5_000)?, None, "an absent row reads as None");
    summary.read_loads = users.store().loads.load(Ordering::Relaxed);

    // Write-through: each put returns once the row is committed.
    let users = Cache::builder()
        .max_capacity(1_000)
        .write_through(Users::open(path)?)
        .build()?;
    for id in 0..100u64 {
        users.put(id, format!("renamed {id}"))?;
        assert_eq!(users.store().row(id)?, Some(format!("renamed {id}")));
        summary.through_puts += 1;
    }
    summary.through_calls = users.store().write_calls.load(Ordering::Relaxed);

    // Write-back: puts land in the cache and a queue; the flusher commits
    // batches. Ten renames per user coalesce into one row write each.
    let users = Cache::builder()
        .max_capacity(50)
        .write_back(
            Users::open(path)?,
            WriteBack::default()
                .max_delay(Duration::from_millis(20))
                .batch(256),
        )
        .build()?;
    for round in 0..10u64 {
        for id in 0..100u64 {
            users.put(id, format!("round {round} name {id}"))?;
            summary.back_writes += 1;
        }
    }
    for id in 100..110u64 {
        users.put(id, format!("new {id}"))?;
        users.delete(&id)?;
        summary.back_writes += 2;
    }
    // Read-your-writes: most of these were evicted from the 50-entry cache.
    assert_eq!(users.get(&3)?, Some("round 9 name 3".to_string()));
    assert_eq!(users.get(&105)?, None);
    users.close()?;
    for id in 0..100u64 {
        assert_eq!(users.store().row(id)?, Some(format!("round 9 name {id}")));
    }
    assert_eq!(users.store().row(105)?, None);
    summary.back_calls = users.store().write_calls.load(Ordering::Relaxed);
    summary.rows = users.store().count()?;
    Ok(summary)
}

#[allow(dead_code)] // tests/sqlite.rs includes this file for `run` alone
fn main() -> Result<(), Box<dyn Error>> {
    let path = match std::env::args_os().nth(1) {
        Some(path) => PathBuf::from(path),
        None => {
            let path =
                std::env::temp_dir().join(format!("larder-sqlite-{}.db", std::process::id()));
            let _ = std::fs::remove_file(&path);
            path
        }
    };
    let s = run(&path)?;
    println!("SQLite at {}", path.display());
    println!(
        "read-through : {} gets of 100 users -> {} database loads",
        s.read_gets, s.read_loads
    );
    println!(
        "write-through: {} puts -> {} database writes (each committed before put returned)",
        s.through_puts, s.through_calls
    );
    println!(
        "write-back   : {} puts/deletes -> {} database write calls (coalesced, batched)",
        s.back_writes, s.back_calls
    );
    println!("rows in the table: {}", s.rows);
    Ok(())
}
