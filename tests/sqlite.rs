//! The SQLite example against a temporary database: each policy leaves the
//! rows it promises, and write-back costs the database far fewer calls.

#[path = "../examples/sqlite.rs"]
mod sqlite;

#[test]
fn the_sqlite_example_keeps_its_promises() {
    let path = std::env::temp_dir().join(format!("larder-test-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let summary = sqlite::run(&path).expect("the example runs");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    // Read-through: one load per distinct user, plus the absent one.
    assert_eq!(summary.read_gets, 1_000);
    assert_eq!(summary.read_loads, 101);
    // Write-through: one committed write per put.
    assert_eq!(summary.through_calls, summary.through_puts);
    // Write-back: 1,020 writes coalesce and batch into a handful of commits.
    assert_eq!(summary.back_writes, 1_020);
    assert!(
        summary.back_calls * 10 <= summary.back_writes,
        "{} calls for {} writes",
        summary.back_calls,
        summary.back_writes
    );
    assert_eq!(summary.rows, 100);
}
