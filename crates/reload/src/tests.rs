use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use airlock_testkit::TestCa;

use super::*;

/// Lays out `dir` as Kubernetes mounts a ConfigMap: `name` is a symlink to
/// `..data/name`, `..data` a symlink to a timestamped directory. A new
/// version is a new directory, and `..data` is swapped to it by a rename.
fn configmap_version(dir: &Path, version: u32, name: &str, text: &str) {
    let versioned = dir.join(format!("..2026_12_03_v{version}"));
    std::fs::create_dir(&versioned).unwrap();
    std::fs::write(versioned.join(name), text).unwrap();
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(versioned.file_name().unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    let link = dir.join(name);
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink(Path::new("..data").join(name), &link).unwrap();
    }
}

async fn until(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_configmap_symlink_swap_is_applied_and_a_broken_version_refused_once() {
    let dir = tempfile::tempdir().unwrap();
    configmap_version(dir.path(), 1, "airlock.yaml", "v1");
    let path = dir.path().join("airlock.yaml");
    let in_force = Arc::new(Mutex::new(std::fs::read_to_string(&path).unwrap()));
    let calls = Arc::new(AtomicUsize::new(0));
    let apply: Apply = {
        let (path, in_force, calls) = (path.clone(), in_force.clone(), calls.clone());
        Arc::new(move || {
            calls.fetch_add(1, Ordering::SeqCst);
            let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
            if text.starts_with("broken") {
                return Err(format!("{}: does not parse", path.display()));
            }
            *in_force.lock().unwrap() = text;
            Ok(())
        })
    };
    let reloads = Reloads::new();
    let task = watch_every(
        "policies",
        vec![path.clone()],
        reloads.clone(),
        apply,
        Duration::from_millis(50),
        fingerprint(std::slice::from_ref(&path)),
    );

    configmap_version(dir.path(), 2, "airlock.yaml", "v2");
    until("v2 in force", || *in_force.lock().unwrap() == "v2").await;
    assert_eq!(reloads.count("policies", Outcome::Applied), 1);

    configmap_version(dir.path(), 3, "airlock.yaml", "broken yaml");
    until("the broken version refused", || {
        reloads.count("policies", Outcome::Refused) == 1
    })
    .await;
    assert_eq!(*in_force.lock().unwrap(), "v2", "the old version stays in force");
    // Not retried while the files stay the same.
    let calls_after_refusal = calls.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(calls.load(Ordering::SeqCst), calls_after_refusal);

    configmap_version(dir.path(), 4, "airlock.yaml", "v4");
    until("v4 in force", || *in_force.lock().unwrap() == "v4").await;
    assert_eq!(reloads.count("policies", Outcome::Applied), 2);
    task.abort();
}

#[tokio::test]
async fn a_file_that_disappears_and_returns_is_seen_both_times() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, "v1").unwrap();
    let reloads = Reloads::new();
    let apply: Apply = {
        let path = path.clone();
        Arc::new(move || std::fs::read(&path).map(drop).map_err(|e| e.to_string()))
    };
    let task = watch_every(
        "p",
        vec![path.clone()],
        reloads.clone(),
        apply,
        Duration::from_millis(50),
        fingerprint_of(&[b"v1"]),
    );
    std::fs::remove_file(&path).unwrap();
    until("the missing file refused", || {
        reloads.count("p", Outcome::Refused) == 1
    })
    .await;
    std::fs::write(&path, "v1").unwrap();
    until("the file back", || reloads.count("p", Outcome::Applied) == 1).await;
    task.abort();
}

#[test]
fn a_certificate_is_replaced_only_by_a_pair_that_belongs_together() {
    let ca = TestCa::new("reload test CA");
    let first = ca.server("first");
    let second = ca.server("second");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::copy(&first.cert, &cert).unwrap();
    std::fs::copy(&first.key, &key).unwrap();
    let live = LiveCert::load(&cert, &key).unwrap();
    let original = live.current().cert[0].clone();

    // The certificate rotated but the key not yet: refused, the old pair stays.
    std::fs::copy(&second.cert, &cert).unwrap();
    let error = live.reload().unwrap_err();
    assert!(error.contains("do not make a certificate and key"), "{error}");
    assert_eq!(live.current().cert[0], original);

    // Not a PEM file at all.
    std::fs::write(&key, "not a key").unwrap();
    let error = live.reload().unwrap_err();
    assert!(error.contains("tls.key"), "{error}");
    assert_eq!(live.current().cert[0], original);

    std::fs::copy(&second.key, &key).unwrap();
    live.reload().unwrap();
    assert_ne!(live.current().cert[0], original);

    let error = LiveCert::load(&dir.path().join("missing.crt"), &key).unwrap_err();
    assert!(error.contains("missing.crt"), "{error}");
}

#[test]
fn the_metric_has_conventional_names() {
    let reloads = Reloads::new();
    let mut registry = Registry::with_prefix("airlock_proxy");
    reloads.register(&mut registry);
    reloads.record("policies", Outcome::Refused);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("airlock_proxy_config_reloads_total{what=\"policies\",outcome=\"refused\"} 1"),
        "{text}"
    );
}

/// Review finding: a file written in place, caught between two writes, can
/// parse as a weaker policy. A change is applied only once two reads agree.
#[tokio::test]
async fn a_file_still_changing_is_not_applied_until_it_settles() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("airlock.yaml");
    std::fs::write(&path, "v1").unwrap();
    let applied = Arc::new(Mutex::new(Vec::<String>::new()));
    let apply: Apply = {
        let (path, applied) = (path.clone(), applied.clone());
        Arc::new(move || {
            applied
                .lock()
                .unwrap()
                .push(std::fs::read_to_string(&path).unwrap_or_default());
            Ok(())
        })
    };
    let reloads = Reloads::new();
    let every = Duration::from_millis(100);
    let task = watch_every(
        "p",
        vec![path.clone()],
        reloads.clone(),
        apply,
        every,
        fingerprint_of(&[b"v1"]),
    );
    // Changes faster than the poll: each read sees another version.
    for i in 0..30 {
        std::fs::write(&path, format!("partial {i}")).unwrap();
        tokio::time::sleep(every / 4).await;
    }
    std::fs::write(&path, "complete").unwrap();
    until("the settled version", || {
        reloads.count("p", Outcome::Applied) >= 1
    })
    .await;
    tokio::time::sleep(every * 3).await;
    assert_eq!(*applied.lock().unwrap(), vec!["complete".to_owned()]);
    task.abort();
}

#[tokio::test]
async fn a_path_that_is_not_a_regular_file_never_checks_and_a_panic_is_a_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, "v1").unwrap();
    let reloads = Reloads::new();
    let apply: Apply = Arc::new(|| panic!("a bug in apply"));
    let task = watch_every(
        "p",
        vec![path.clone()],
        reloads.clone(),
        apply,
        Duration::from_millis(50),
        fingerprint_of(&[b"v1"]),
    );
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
    until("the panic counted as a refusal", || {
        reloads.count("p", Outcome::Refused) == 1
    })
    .await;
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, "v2").unwrap();
    until("the watcher still runs", || {
        reloads.count("p", Outcome::Refused) == 2
    })
    .await;
    assert!(!task.is_finished());
    task.abort();
}
