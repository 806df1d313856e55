//! The store sink with its input buffer spilling, and replaying what a killed run spooled.

use super::*;
use crate::sinks::store::spool::{spool_path, SPOOL_DIR};

#[test]
fn with_no_memory_budget_every_batch_is_stored_once_and_the_spool_is_emptied() {
    let dir = tempfile::tempdir().unwrap();
    let schema = info("probe0.ap", 4).schema();
    let input = batches(&schema, 200, 300);
    // No memory budget: every batch the writer has not taken yet goes to the spool.
    let registry = run_sink(dir.path(), "buffer_memory_bytes = 0", &input);
    let stream_dir = dir.path().join(ID).join("probe0.ap");
    assert_eq!(stored_rows(&stream_dir, &schema), concat(&schema, &input));
    let m = registry.store(ID, "probe0.ap");
    assert_eq!(m.buffer_dropped_rows.get(), 0);
    assert_eq!(m.buffered_memory_bytes.get(), 0.0);
    assert_eq!(m.buffered_disk_bytes.get(), 0.0);
    let spool = dir.path().join(ID).join(SPOOL_DIR);
    if spool.exists() {
        assert_eq!(file_names(&spool), Vec::<String>::new());
    }
}

#[test]
fn a_spool_left_by_a_killed_run_is_stored_past_its_progress_note() {
    let dir = tempfile::tempdir().unwrap();
    let schema = info("probe0.ap", 4).schema();
    let spooled = batches(&schema, 6, 100);
    let spool = dir.path().join(ID).join(SPOOL_DIR);
    std::fs::create_dir_all(&spool).unwrap();
    let path = spool_path(&spool, 4);
    let mut w = SegmentWriter::create(&path, schema.clone()).unwrap();
    for b in &spooled {
        w.write(b).unwrap();
    }
    drop(w);
    // The killed run had stored the first two.
    std::fs::write(path.with_extension("taken"), 2u64.to_le_bytes()).unwrap();
    let later = batch(&schema, 600, 100);
    run_sink(dir.path(), "", std::slice::from_ref(&later));
    let stream_dir = dir.path().join(ID).join("probe0.ap");
    let mut expected = spooled[2..].to_vec();
    expected.push(later);
    assert_eq!(
        stored_rows(&stream_dir, &schema),
        concat(&schema, &expected)
    );
    assert_eq!(file_names(&spool), Vec::<String>::new());
}
