//! The state file's atomic write and its reading: a reader never sees a half-written file, a
//! failed write leaves the previous file as it was, and a file that is not state is moved aside.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{check_path, load, write_atomic};

#[test]
fn a_reader_sees_the_old_or_the_new_file_whole_never_a_part() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let old = vec![b'a'; 1 << 20];
    let new = vec![b'b'; (1 << 20) + 4096];
    write_atomic(&path, &old).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (path, stop) = (path.clone(), stop.clone());
        let (old_len, new_len) = (old.len(), new.len());
        std::thread::spawn(move || {
            let mut reads = 0;
            while !stop.load(Ordering::Relaxed) {
                let bytes = std::fs::read(&path).expect("the file is always there");
                let whole = (bytes.len() == old_len && bytes.iter().all(|b| *b == b'a'))
                    || (bytes.len() == new_len && bytes.iter().all(|b| *b == b'b'));
                assert!(whole, "a partial file of {} bytes was read", bytes.len());
                reads += 1;
            }
            reads
        })
    };
    for i in 0..100 {
        write_atomic(&path, if i % 2 == 0 { &new } else { &old }).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let reads = reader.join().expect("every read saw a whole file");
    assert!(reads > 0);
    assert!(!path.with_extension("tmp").exists(), "no temporary file is left");
}

#[test]
fn a_write_that_fails_leaves_the_previous_file_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    write_atomic(&path, b"{\"previous\": true}").unwrap();
    // The temporary file cannot be created: a directory is in its place.
    std::fs::create_dir(path.with_extension("tmp")).unwrap();
    assert!(write_atomic(&path, b"{\"next\": true}").is_err());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"previous\": true}");
}

#[test]
fn a_missing_parent_directory_is_created_by_the_path_check_of_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/state.json");
    check_path(&path, false).unwrap();
    assert!(!dir.path().join("a").exists(), "check changes nothing");
    check_path(&path, true).unwrap();
    write_atomic(&path, b"x").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"x");
}

#[test]
fn no_file_is_no_state_and_a_file_that_is_not_state_is_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    assert!(load(&path).is_none());

    std::fs::write(&path, "{\"version\": 1, \"saved_at_ms\": ").unwrap();
    assert!(load(&path).is_none());
    assert!(!path.exists(), "moved aside");
    assert_eq!(
        std::fs::read_to_string(path.with_extension("corrupt")).unwrap(),
        "{\"version\": 1, \"saved_at_ms\": "
    );
}
