//! Replays every input committed under `fuzz/regressions/<target>/` through the same code the
//! cargo-fuzz target of that name runs (`fuzz/targets.rs`): inputs that once crashed or hung a
//! parser stay fixed, and the seed inputs keep the targets exercised under plain `cargo test`.

#[path = "../fuzz/targets.rs"]
mod targets;

use std::path::Path;

/// Every input committed under fuzz/ is handled by its fuzz target without a panic.
#[test]
fn every_committed_fuzz_input_is_handled() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut replayed = 0;
    for (name, target) in targets::TARGETS {
        let dir = root.join(name);
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e} (every target keeps its inputs)", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            let input = std::fs::read(&path).expect("read input");
            target(&input);
            replayed += 1;
        }
    }
    assert!(
        replayed >= targets::TARGETS.len(),
        "replayed {replayed} inputs"
    );
}

/// The sealed seed of `stored_message` reaches the decoders behind the seals: it is sealed the
/// way the store seals (part labels, message id), with the target's fixed key.
#[test]
fn the_stored_message_seed_opens_with_the_fixed_key() {
    let seed = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions/stored_message/sealed-with-the-fixed-key");
    let (fields, body) =
        targets::open_stored_message(&std::fs::read(seed).expect("read seed")).expect("opens");
    assert_eq!(fields.subject, "Seized pistol");
    assert!(body.content.is_some());
}
