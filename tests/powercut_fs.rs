//! The power-cut FUSE file system (`scaleout::chaos::powercut`) on a real mount: synced data
//! survives a cut and unsynced data does not, fdatasync counts as a sync, names behave as on a
//! plain directory, a torn write keeps at most a prefix of the first unsynced write, and sled
//! and flock work on it.
//!
//! Every test mounts its own file system in a temp dir and unmounts it when it ends. They need
//! /dev/fuse and root: without them they fail with the mount error (none is skipped).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use scaleout::chaos::powercut::{CutReport, PowerCutError, PowerCutFs};
use tempfile::TempDir;

/// A mounted file system and its mountpoint. Fields drop in declaration order: it unmounts
/// before the directory is removed.
struct Mounted {
    fs: PowerCutFs,
    _dir: TempDir,
}

impl Mounted {
    fn new() -> Mounted {
        let dir = tempfile::Builder::new()
            .prefix("powercut-")
            .tempdir()
            .expect("a temp dir");
        let fs = PowerCutFs::mount(dir.path()).unwrap_or_else(|error| panic!("{error}"));
        Mounted { fs, _dir: dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.fs.mountpoint().join(name)
    }
}

#[test]
fn synced_data_survives_a_cut_and_unsynced_data_does_not() {
    let m = Mounted::new();
    let log = m.path("log");
    let mut file = File::create(&log).unwrap();
    file.write_all(b"synced ").unwrap();
    file.sync_all().unwrap();
    file.write_all(b"unsynced").unwrap();
    drop(file);
    assert_eq!(fs::read(&log).unwrap(), b"synced unsynced");

    // An overwrite inside synced bytes, then a truncate and an extension, none synced.
    let other = m.path("other");
    let file = File::create(&other).unwrap();
    file.write_all_at(b"0123456789", 0).unwrap();
    file.sync_all().unwrap();
    file.write_all_at(b"AB", 3).unwrap();
    file.set_len(4).unwrap();
    file.set_len(20).unwrap();
    drop(file);
    assert_eq!(
        fs::read(&other).unwrap(),
        b"012A\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0"
    );

    let report = m.fs.cut(None);
    assert_eq!(
        report,
        CutReport {
            files: 2,
            lost_bytes: 8 + 2
        }
    );
    assert_eq!(fs::read(&log).unwrap(), b"synced ");
    assert_eq!(
        fs::metadata(&log).unwrap().len(),
        7,
        "the length goes back too"
    );
    assert_eq!(fs::read(&other).unwrap(), b"0123456789");
    assert_eq!(m.fs.cut(None), CutReport::default(), "nothing left to lose");

    // The file keeps working after the cut: an append lands at the durable end.
    let mut file = OpenOptions::new().append(true).open(&log).unwrap();
    file.write_all(b"again").unwrap();
    file.sync_data().unwrap();
    drop(file);
    m.fs.cut(None);
    assert_eq!(fs::read(&log).unwrap(), b"synced again");
}

#[test]
fn fdatasync_is_a_sync_and_is_counted() {
    let m = Mounted::new();
    assert_eq!(m.fs.syncs(), 0);
    let path = m.path("data");
    let mut file = File::create(&path).unwrap();
    file.write_all(b"abc").unwrap();
    file.sync_data().unwrap();
    assert_eq!(m.fs.syncs(), 1);
    file.write_all(b"def").unwrap();
    file.sync_all().unwrap();
    assert_eq!(m.fs.syncs(), 2);
    file.sync_data().unwrap();
    assert_eq!(m.fs.syncs(), 3, "a sync with nothing to sync still counts");
    file.write_all(b"ghi").unwrap();
    drop(file);
    assert_eq!(m.fs.cut(None).lost_bytes, 3);
    assert_eq!(fs::read(&path).unwrap(), b"abcdef");
}

#[test]
fn a_never_synced_file_survives_a_cut_empty() {
    let m = Mounted::new();
    fs::create_dir(m.path("dir")).unwrap();
    fs::write(m.path("dir/new"), b"never synced").unwrap();
    fs::write(m.path("top"), vec![7u8; 100_000]).unwrap();
    let report = m.fs.cut(None);
    assert_eq!(
        report,
        CutReport {
            files: 2,
            lost_bytes: 12 + 100_000
        }
    );
    // Names are not undone: the files are there, empty.
    assert_eq!(fs::read(m.path("dir/new")).unwrap(), b"");
    assert_eq!(fs::metadata(m.path("top")).unwrap().len(), 0);
    let mut names: Vec<_> = fs::read_dir(m.path(""))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["dir", "top"]);
}

/// Runs the same operations under `root` and returns what each one gave (errors as errno),
/// so a plain directory and the mount can be compared.
fn script(root: &Path) -> Vec<String> {
    let mut log = Vec::new();
    let p = |name: &str| root.join(name);
    let mut note = |step: &str, result: std::io::Result<String>| {
        log.push(match result {
            Ok(value) => format!("{step}: ok {value}"),
            Err(error) => format!("{step}: errno {:?}", error.raw_os_error()),
        });
    };
    let done = |result: std::io::Result<()>| result.map(|()| String::new());

    note("mkdir a", done(fs::create_dir(p("a"))));
    note("mkdir a/b/c", done(fs::create_dir_all(p("a/b/c"))));
    note("mkdir a again", done(fs::create_dir(p("a"))));
    note("write a/one", done(fs::write(p("a/one"), b"one")));
    note("write a/b/two", done(fs::write(p("a/b/two"), b"two two")));
    note("write top", done(fs::write(p("top"), b"top")));
    note("rename a/one", done(fs::rename(p("a/one"), p("a/b/one2"))));
    note(
        "rename over a file",
        done(fs::rename(p("top"), p("a/b/two"))),
    );
    note(
        "rename to itself",
        done(fs::rename(p("a/b/two"), p("a/b/two"))),
    );
    note("move a dir up", done(fs::rename(p("a/b/c"), p("c2"))));
    note(
        "move a dir into itself",
        done(fs::rename(p("a"), p("a/b/x"))),
    );
    note("mkdir e", done(fs::create_dir(p("e"))));
    note("write e/f", done(fs::write(p("e/f"), b"f")));
    note("rename over a full dir", done(fs::rename(p("c2"), p("e"))));
    note("mkdir g", done(fs::create_dir(p("g"))));
    note(
        "rename over an empty dir",
        done(fs::rename(p("c2"), p("g"))),
    );
    note(
        "rename a file over a dir",
        done(fs::rename(p("e/f"), p("g"))),
    );
    note(
        "rename a dir over a file",
        done(fs::rename(p("g"), p("e/f"))),
    );
    note("rmdir a full dir", done(fs::remove_dir(p("e"))));
    note("unlink a dir", done(fs::remove_file(p("e"))));
    note("rmdir a file", done(fs::remove_dir(p("e/f"))));
    note("open a missing file", fs::read_to_string(p("missing")));
    note("mkdir under a file", done(fs::create_dir(p("e/f/x"))));
    note("rmdir missing", done(fs::remove_dir(p("nothing"))));

    // Truncate, extend (zeros), append, and a write past the end (a hole).
    note("write t", done(fs::write(p("t"), b"0123456789")));
    let truncated = (|| {
        let file = OpenOptions::new().write(true).open(p("t"))?;
        file.set_len(3)?;
        file.set_len(8)?;
        file.write_all_at(b"hole", 12)?;
        drop(file);
        let mut file = OpenOptions::new().append(true).open(p("t"))?;
        file.write_all(b"+append")?;
        Ok(format!("{:?}", fs::read(p("t"))?))
    })();
    note("truncate, extend, hole, append", truncated);
    note("O_TRUNC", done(fs::write(p("t"), b"short")));

    // An unlinked file that is still open keeps its data.
    let unlinked = (|| {
        fs::write(p("u"), b"still here")?;
        let mut file = OpenOptions::new().read(true).write(true).open(p("u"))?;
        fs::remove_file(p("u"))?;
        file.write_all_at(b"STILL", 0)?;
        let mut text = String::new();
        file.read_to_string(&mut text)?;
        Ok(format!("{text} exists={}", p("u").exists()))
    })();
    note("unlinked but open", unlinked);

    // Enough entries that a listing takes several readdir calls, removed while listing.
    let many = (|| {
        fs::create_dir(p("many"))?;
        for n in 0..300 {
            fs::write(
                p(&format!("many/entry-with-a-long-name-{n:04}")),
                n.to_string(),
            )?;
        }
        let count = fs::read_dir(p("many"))?.count();
        fs::remove_dir_all(p("many"))?;
        Ok(format!("{count} exists={}", p("many").exists()))
    })();
    note("300 entries", many);

    // Another process (same user) reads through the mount.
    let cat = Command::new("cat")
        .arg(p("a/b/two"))
        .output()
        .map(|out| format!("{} {}", out.status, String::from_utf8_lossy(&out.stdout)));
    note("cat in a child", cat);
    log.extend(tree(root));
    log
}

/// Every path under `root`, with a file's bytes or `dir`, sorted.
fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let name = path.strip_prefix(root).unwrap().display().to_string();
            if entry.file_type().unwrap().is_dir() {
                out.push(format!("{name}: dir"));
                pending.push(path);
            } else {
                out.push(format!("{name}: {:?}", fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn names_and_contents_behave_like_a_plain_directory() {
    let plain = tempfile::tempdir().unwrap();
    let m = Mounted::new();
    let expected = script(plain.path());
    let got = script(m.fs.mountpoint());
    for (want, have) in expected.iter().zip(&got) {
        assert_eq!(want, have);
    }
    assert_eq!(expected.len(), got.len());
    // Sanity: the script did exercise the errors.
    assert!(expected.iter().any(|line| line.contains("errno Some(39)")));
}

#[test]
fn a_torn_write_keeps_at_most_a_prefix_of_the_first_unsynced_write() {
    let first = torn_outcomes();
    let again = torn_outcomes();
    assert_eq!(first, again, "the same seed tears the same way");
    let mut distinct = first.clone();
    distinct.sort();
    distinct.dedup();
    assert!(distinct.len() >= 3, "{first:?}");
}

/// For 32 seeds on a fresh mount: a synced head, two unsynced appends, and a file with an
/// unsynced overwrite; returns how much of the first unsynced write survived, per seed.
fn torn_outcomes() -> Vec<(usize, usize)> {
    let m = Mounted::new();
    let mut outcomes = Vec::new();
    for seed in 0..32u64 {
        let appended = m.path(&format!("appended-{seed}"));
        let file = File::create(&appended).unwrap();
        file.write_all_at(b"durable:", 0).unwrap();
        file.sync_data().unwrap();
        file.write_all_at(&[b'x'; 64], 8).unwrap();
        file.write_all_at(b"second", 72).unwrap();
        drop(file);

        let overwritten = m.path(&format!("overwritten-{seed}"));
        let file = File::create(&overwritten).unwrap();
        file.write_all_at(b"aaaaaaaa", 0).unwrap();
        file.sync_data().unwrap();
        file.write_all_at(b"bbbb", 2).unwrap();
        drop(file);

        let report = m.fs.cut(Some(seed));
        let content = fs::read(&appended).unwrap();
        assert!(content.starts_with(b"durable:"), "{content:?}");
        let kept = content.len() - 8;
        assert!(kept <= 64, "{content:?}");
        assert!(content[8..].iter().all(|byte| *byte == b'x'), "{content:?}");

        let content = fs::read(&overwritten).unwrap();
        assert_eq!(content.len(), 8);
        let over = content[2..6]
            .iter()
            .take_while(|byte| **byte == b'b')
            .count();
        let mut want = b"aaaaaaaa".to_vec();
        want[2..2 + over].fill(b'b');
        assert_eq!(content, want);

        assert_eq!(
            report,
            CutReport {
                files: 2,
                lost_bytes: (64 + 6 - kept + 4 - over) as u64
            }
        );
        outcomes.push((kept, over));
    }
    outcomes
}

#[test]
fn sled_opens_flushes_and_reopens() {
    let m = Mounted::new();
    let path = m.path("db");
    {
        let db = sled::open(&path).unwrap();
        for n in 0..1000u32 {
            db.insert(n.to_be_bytes(), format!("value {n}").as_bytes())
                .unwrap();
        }
        db.flush().unwrap();
    }
    // sled's flusher thread lets go of the file lock shortly after the handle is dropped, not
    // at once: reopen until it has (a bounded wait, not a sleep).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let db = loop {
        match sled::open(&path) {
            Ok(db) => break db,
            Err(error) if error.to_string().contains("could not acquire lock") => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the lock was never released: {error}"
                );
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(error) => panic!("reopen: {error}"),
        }
    };
    assert_eq!(db.len(), 1000);
    for n in 0..1000u32 {
        let value = db.get(n.to_be_bytes()).unwrap().unwrap();
        assert_eq!(&*value, format!("value {n}").as_bytes());
    }
    assert!(m.fs.syncs() > 0, "sled synced nothing");
}

/// `flock -n`, run as a child process, on `path`; true when it got the lock.
fn flock_free(path: &Path) -> bool {
    let status = Command::new("flock")
        .args(["--exclusive", "--nonblock"])
        .arg(path)
        .arg("true")
        .status()
        .unwrap();
    status.success()
}

#[test]
fn flock_works() {
    let m = Mounted::new();
    let path = m.path("lock");
    fs::write(&path, b"").unwrap();
    assert!(flock_free(&path));
    // The lock held by an outer flock(1) keeps an inner one out (LOCK_EX|LOCK_NB, two opens).
    let nested = Command::new("flock")
        .args(["--exclusive", "--nonblock"])
        .arg(&path)
        .args(["flock", "--exclusive", "--nonblock"])
        .arg(&path)
        .arg("true")
        .status()
        .unwrap();
    assert_eq!(nested.code(), Some(1), "the inner flock got a held lock");

    // sled takes flock(LOCK_EX|LOCK_NB) on its `db` file: a second open fails while the first
    // holds it, in this process and in another.
    let dir = m.path("sled");
    let db = sled::open(&dir).unwrap();
    let second = sled::open(&dir).map(|_| ()).unwrap_err().to_string();
    assert!(second.contains("could not acquire lock"), "{second}");
    assert!(!flock_free(&dir.join("db")));
    drop(db);
    assert!(flock_free(&dir.join("db")));
}

#[test]
fn the_mount_error_says_what_is_needed() {
    let error = PowerCutError::NoFuseDevice {
        mountpoint: PathBuf::from("/mnt/x"),
    };
    let message = error.to_string();
    assert!(message.contains("/mnt/x"), "{message}");
    assert!(
        message.contains("needs /dev/fuse and root (CAP_SYS_ADMIN)"),
        "{message}"
    );
    // A mountpoint that does not exist fails with the same hint.
    let message = PowerCutFs::mount(Path::new("/nonexistent/powercut"))
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(message.contains("/nonexistent/powercut"), "{message}");
    assert!(message.contains("needs /dev/fuse and root"), "{message}");
}

#[test]
fn dropping_it_with_a_file_still_open_frees_the_mountpoint() {
    let dir = tempfile::tempdir().unwrap();
    let fs = PowerCutFs::mount(dir.path()).unwrap_or_else(|error| panic!("{error}"));
    fs::write(dir.path().join("open"), b"hello").unwrap();
    let mut file = File::open(dir.path().join("open")).unwrap();
    // unmount(2) says EBUSY here; Drop then detaches the mount lazily.
    drop(fs);
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&*dir.path().to_string_lossy()),
        "still mounted"
    );
    let mut text = String::new();
    file.read_to_string(&mut text).unwrap();
    assert_eq!(text, "hello", "the open file is served until it is closed");
    drop(file);
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
}
