//! `deploy/kubernetes`: validated against Kubernetes' own schemas
//! (`kubernetes-validate --strict`), held to the rest of the repository
//! (the NATS permissions, the alert rules, the configuration shared by the
//! binaries), and **booted**: every pod of the manifests is started here as
//! a process, with the container's command, arguments and environment, its
//! volumes laid out from the ConfigMaps and from the Secrets
//! `secrets.sh` makes, and only addresses changed: listen ports and
//! Service names to loopback ports, and Entra's issuer to the development
//! issuer. A DELETE held on a proxy is approved through the reviewer
//! service and runs, so the shipped configuration is known to work.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use airlock_e2e::binaries::{Child, balance, fresh_binary, http_get, wait_port};
use airlock_testkit::{Postgres, PostgresOptions, eventually_blocking, find_binary, free_port};
use base64::Engine as _;
use serde_json::Value;

use crate::deploy::{dev_material, repo};

fn dir() -> PathBuf {
    repo().join("deploy/kubernetes")
}

/// The YAML documents of `text` (separated by `---` lines), as JSON values.
fn documents(text: &str, what: &str) -> Vec<Value> {
    let mut docs = Vec::new();
    let mut push = |doc: &str| {
        let meaningful = doc
            .lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
        if meaningful {
            docs.push(serde_norway::from_str(doc).unwrap_or_else(|e| panic!("{what}: {e}")));
        }
    };
    let mut current = String::new();
    for line in text.lines() {
        if line == "---" {
            push(&current);
            current.clear();
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    push(&current);
    docs
}

/// The files `kustomization.yaml` lists.
fn resources() -> Vec<String> {
    let text = std::fs::read_to_string(dir().join("kustomization.yaml")).expect("kustomization.yaml");
    let k: Value = serde_norway::from_str(&text).expect("kustomization.yaml");
    k["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().expect("a file name").to_owned())
        .collect()
}

/// Every object of the manifests.
fn manifests() -> Vec<Value> {
    resources()
        .iter()
        .flat_map(|file| {
            let text = std::fs::read_to_string(dir().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
            documents(&text, file)
        })
        .collect()
}

fn object<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the manifests"))
}

fn kubernetes_validate() -> PathBuf {
    find_binary("kubernetes-validate", "AIRLOCK_KUBERNETES_VALIDATE", &[])
}

/// What `secrets.sh` writes for `material`: the Secrets and the trust
/// ConfigMap, as YAML.
fn secrets_sh(material: &Path) -> String {
    let out = Command::new(dir().join("secrets.sh"))
        .arg(material)
        .output()
        .expect("run secrets.sh");
    assert!(
        out.status.success(),
        "secrets.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("secrets.sh writes text")
}

#[test]
fn the_manifests_validate_and_agree_with_the_rest_of_the_repository() {
    let files = resources();
    // Every manifest in the folder is applied.
    let mut present: Vec<String> = std::fs::read_dir(dir())
        .expect("deploy/kubernetes")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    present.sort();
    let mut listed = files.clone();
    listed.sort();
    assert_eq!(present, listed, "kustomization.yaml lists every manifest");

    let tmp = tempfile::tempdir().expect("tmp");
    let material = dev_material(tmp.path(), &["--namespace", "airlock"]);
    let secrets = tmp.path().join("secrets.yaml");
    std::fs::write(&secrets, secrets_sh(&material)).expect("write");
    let out = Command::new(kubernetes_validate())
        .args(["--strict", "--kubernetes-version", "1.33.0"])
        .args(files.iter().map(|f| dir().join(f)))
        .arg(&secrets)
        .output()
        .expect("run kubernetes-validate");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "kubernetes-validate: {said}");
    // The only objects without a schema are the Prometheus Operator's.
    for line in said.lines().filter(|l| l.contains("Couldn't find schema")) {
        assert!(
            line.contains("kind PodMonitor") || line.contains("kind PrometheusRule"),
            "{line}"
        );
    }
    assert!(
        said.contains("passed for resource statefulset/airlock-proxy"),
        "{said}"
    );

    let objects = manifests();
    // Secrets are referenced, never written in the manifests.
    assert!(
        !objects.iter().any(|o| o["kind"] == "Secret"),
        "a Secret is inlined in deploy/kubernetes"
    );
    // Every Secret and ConfigMap a pod refers to exists: in the manifests
    // or among what secrets.sh writes.
    let made = documents(&std::fs::read_to_string(&secrets).expect("secrets"), "secrets.sh");
    let store = Store::new(&objects, &made);
    for workload in objects
        .iter()
        .filter(|o| o["kind"] == "StatefulSet" || o["kind"] == "Deployment")
    {
        let spec = &workload["spec"]["template"]["spec"];
        for volume in spec["volumes"].as_array().into_iter().flatten() {
            store.files(volume, "any");
        }
        for env in spec["containers"][0]["env"].as_array().into_iter().flatten() {
            if let Some(r) = env["valueFrom"].get("secretKeyRef") {
                store.secret_value(r["name"].as_str().expect("name"), r["key"].as_str().expect("key"));
            }
        }
    }

    // The NATS users are deploy/nats's.
    let nats = object(&objects, "ConfigMap", "nats-config");
    let permissions =
        std::fs::read_to_string(repo().join("deploy/nats/airlock-permissions.conf")).expect("permissions");
    assert_eq!(
        nats["data"]["airlock-permissions.conf"].as_str(),
        Some(permissions.as_str()),
        "nats-config's airlock-permissions.conf differs from deploy/nats/airlock-permissions.conf"
    );
    // The alerts are deploy/observability's.
    let rules = object(&objects, "PrometheusRule", "airlock");
    let alerts: Value = serde_norway::from_str(
        &std::fs::read_to_string(repo().join("deploy/observability/alerts.yaml")).expect("alerts"),
    )
    .expect("alerts.yaml");
    assert_eq!(
        rules["spec"]["groups"], alerts["groups"],
        "the PrometheusRule differs from deploy/observability/alerts.yaml"
    );
    // The binaries share identity, approvals and signing.
    let config = object(&objects, "ConfigMap", "airlock-config");
    let sections: Vec<(String, Value)> = ["control.yaml", "proxy.yaml", "reviewer.yaml"]
        .iter()
        .map(|k| {
            let text = config["data"][*k]
                .as_str()
                .unwrap_or_else(|| panic!("airlock-config has no {k}"));
            ((*k).to_owned(), serde_norway::from_str(text).expect("a config"))
        })
        .collect();
    // Where each section must be: identity everywhere, approvals and
    // signing in the control plane's and the proxies'.
    for (section, files) in [
        ("identity", &["control.yaml", "proxy.yaml", "reviewer.yaml"][..]),
        ("approvals", &["control.yaml", "proxy.yaml"][..]),
        ("signing", &["control.yaml", "proxy.yaml"][..]),
    ] {
        let values: Vec<(&str, &Value)> = sections
            .iter()
            .filter(|(file, _)| files.contains(&file.as_str()))
            .map(|(file, doc)| {
                let value = doc
                    .get(section)
                    .unwrap_or_else(|| panic!("{file} has no `{section}`"));
                (file.as_str(), value)
            })
            .collect();
        for (file, value) in &values[1..] {
            assert_eq!(
                values[0].1, *value,
                "`{section}` differs between {} and {file}",
                values[0].0
            );
        }
    }
    // The proxies: the autoscaler stays within the identity slots, and the
    // grace period covers the pause, the drain and the last events.
    let proxy = object(&objects, "StatefulSet", "airlock-proxy");
    let spec = &proxy["spec"]["template"]["spec"];
    // Its identity volume's entries.
    let items: Vec<&str> = spec["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == "identity")
        .and_then(|v| v["secret"]["items"].as_array())
        .expect("identity items")
        .iter()
        .map(|i| i["path"].as_str().expect("path"))
        .collect();
    let slots = items.iter().filter(|p| p.ends_with("proxy-signing.key")).count();
    let hpa = object(&objects, "HorizontalPodAutoscaler", "airlock-proxy");
    assert!(hpa["spec"]["maxReplicas"].as_u64().expect("maxReplicas") as usize <= slots);
    assert!(proxy["spec"]["replicas"].as_u64().expect("replicas") as usize <= slots);
    // Slot i: its key, certificate and key file under airlock-proxy-<i>,
    // and its public key trusted for exactly that id.
    let trust = sections[1].1["signing"]["trust"].as_array().expect("trust");
    for i in 0..slots {
        let id = format!("airlock-proxy-{i}");
        for file in ["proxy-signing.key", "tls.crt", "tls.key"] {
            assert!(
                items.contains(&format!("{id}/{file}").as_str()),
                "slot {id} lacks {file}"
            );
        }
        assert!(
            trust.iter().any(|t| t["role"] == "proxy"
                && t["id"] == id.as_str()
                && t["key"] == format!("/etc/airlock/trust/{id}.pub").as_str()),
            "slot {id}'s key is not trusted for {id}"
        );
    }
    assert_eq!(trust.iter().filter(|t| t["role"] == "proxy").count(), slots);
    // The reviewer's Ingress passes every route of the reviewer but
    // /metrics and the health endpoints, and those not.
    let ingress = object(&objects, "Ingress", "airlock-reviewer");
    let paths: Vec<(&str, &str)> = ingress["spec"]["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .flat_map(|rule| rule["http"]["paths"].as_array().expect("paths"))
        .map(|p| {
            (
                p["path"].as_str().expect("path"),
                p["pathType"].as_str().expect("type"),
            )
        })
        .collect();
    // Kubernetes' Prefix matches whole path segments.
    let passes = |route: &str| {
        paths.iter().any(|(p, kind)| match *kind {
            "Exact" => route == *p,
            _ => route == *p || route.starts_with(&format!("{}/", p.trim_end_matches('/'))),
        })
    };
    let inside = ["/metrics", "/livez", "/readyz", "/healthz"];
    for (method, route, _) in airlock_reviewer::routes() {
        assert_eq!(
            passes(route),
            !inside.contains(&route),
            "the Ingress {} {method} {route}",
            if inside.contains(&route) {
                "passes"
            } else {
                "does not pass"
            }
        );
    }
    // NATS routes trust a CA of their own, not the fleet's.
    let conf = nats["data"]["nats.conf"].as_str().expect("nats.conf");
    let cluster = &conf[conf.find("cluster {").expect("a cluster block")..];
    assert!(
        cluster.contains("ca_file: /etc/nats/tls/route-ca.crt"),
        "{cluster}"
    );
    assert_ne!(
        store.secrets["airlock-nats-tls"]["route-ca.crt"], store.secrets["airlock-ca"]["ca.crt"],
        "the routes' CA is the fleet's"
    );
    let drain: u64 = sections[1].1["proxy"]["drain_timeout"]
        .as_str()
        .and_then(|d| d.strip_suffix('s'))
        .and_then(|d| d.parse().ok())
        .expect("drain_timeout in seconds");
    let pause = spec["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap_or(0);
    let grace = spec["terminationGracePeriodSeconds"].as_u64().expect("grace");
    assert!(
        grace >= pause + drain + 10,
        "grace {grace} s < {pause} + {drain} + 10 s"
    );
}

/// The ConfigMaps and Secrets pods mount, by name: key to bytes.
struct Store {
    config_maps: HashMap<String, BTreeMap<String, Vec<u8>>>,
    secrets: HashMap<String, BTreeMap<String, Vec<u8>>>,
}

impl Store {
    fn new(manifests: &[Value], made: &[Value]) -> Store {
        let mut store = Store {
            config_maps: HashMap::new(),
            secrets: HashMap::new(),
        };
        for o in manifests.iter().chain(made) {
            let name = o["metadata"]["name"].as_str().expect("a name").to_owned();
            let data = o["data"].as_object().cloned().unwrap_or_default();
            let values = data
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().expect("a string")));
            if o["kind"] == "ConfigMap" {
                store
                    .config_maps
                    .insert(name, values.map(|(k, v)| (k, v.as_bytes().to_vec())).collect());
            } else if o["kind"] == "Secret" {
                let decoded = values
                    .map(|(k, v)| {
                        let bytes = base64::engine::general_purpose::STANDARD
                            .decode(v)
                            .unwrap_or_else(|e| panic!("secret {name} key {k}: {e}"));
                        (k, bytes)
                    })
                    .collect();
                store.secrets.insert(name, decoded);
            }
        }
        store
    }

    fn secret_value(&self, name: &str, key: &str) -> String {
        let bytes = self
            .secrets
            .get(name)
            .and_then(|s| s.get(key))
            .unwrap_or_else(|| panic!("no secret {name} with key {key}"));
        String::from_utf8(bytes.clone()).expect("a text secret")
    }

    /// The files of a volume (path, bytes, from a ConfigMap), for `pod`.
    fn files(&self, volume: &Value, pod: &str) -> Vec<(String, Vec<u8>, bool)> {
        let pick = |source: &Value, data: Option<&BTreeMap<String, Vec<u8>>>, what: &str| {
            let data = data.unwrap_or_else(|| panic!("{pod}: {what} does not exist"));
            match source["items"].as_array() {
                Some(items) => items
                    .iter()
                    .map(|i| {
                        let key = i["key"].as_str().expect("key");
                        let bytes = data
                            .get(key)
                            .unwrap_or_else(|| panic!("{pod}: {what} has no key {key}"));
                        (i["path"].as_str().expect("path").to_owned(), bytes.clone())
                    })
                    .collect::<Vec<_>>(),
                None => data.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            }
        };
        let config_map = |c: &Value| {
            let name = c["name"].as_str().expect("name");
            pick(c, self.config_maps.get(name), &format!("ConfigMap {name}"))
                .into_iter()
                .map(|(p, b)| (p, b, true))
                .collect::<Vec<_>>()
        };
        let secret = |s: &Value, key: &str| {
            let name = s[key].as_str().expect("name");
            pick(s, self.secrets.get(name), &format!("Secret {name}"))
                .into_iter()
                .map(|(p, b)| (p, b, false))
                .collect::<Vec<_>>()
        };
        if let Some(c) = volume.get("configMap") {
            config_map(c)
        } else if let Some(s) = volume.get("secret") {
            secret(s, "secretName")
        } else if let Some(p) = volume.get("projected") {
            p["sources"]
                .as_array()
                .expect("sources")
                .iter()
                .flat_map(|source| match (source.get("configMap"), source.get("secret")) {
                    (Some(c), _) => config_map(c),
                    (None, Some(s)) => secret(s, "name"),
                    (None, None) => panic!("{pod}: a projected source of another kind"),
                })
                .collect()
        } else {
            Vec::new()
        }
    }
}

/// One pod of a workload, as a process.
struct Pod {
    name: String,
    _process: Child,
    /// The readiness probe's path and its port here.
    readiness: Option<(String, u16)>,
    log: PathBuf,
}

/// Starts `pod` of `workload`: its volumes under `root/<pod>/`, its
/// container ports at `ports` (container port to a loopback port), every
/// other address changed by `addresses` (in ConfigMap files and arguments).
fn start_pod(
    workload: &Value,
    pod: &str,
    root: &Path,
    store: &Store,
    addresses: &[(String, String)],
    ports: &HashMap<u64, u16>,
) -> Pod {
    let spec = &workload["spec"]["template"]["spec"];
    let containers = spec["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "{pod}: one container");
    let container = &containers[0];
    let here = root.join(pod);

    let mut env: Vec<(String, String)> = Vec::new();
    for e in container["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().expect("name").to_owned();
        let value = if let Some(v) = e["value"].as_str() {
            v.to_owned()
        } else if e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name" {
            pod.to_owned()
        } else if let Some(r) = e["valueFrom"].get("secretKeyRef") {
            store.secret_value(r["name"].as_str().expect("name"), r["key"].as_str().expect("key"))
        } else {
            panic!("{pod}: env {name} from a source this test does not know: {e}");
        };
        env.push((name, value));
    }
    let expand = |text: &str| {
        env.iter()
            .fold(text.to_owned(), |t, (k, v)| t.replace(&format!("$({k})"), v))
    };

    // Volumes, then mounts: where each mount path is here.
    let mut config_files = Vec::new();
    let mut volumes = HashMap::new();
    let claims = workload["spec"]["volumeClaimTemplates"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let declared = spec["volumes"].as_array().cloned().unwrap_or_default();
    for volume in declared.iter().chain(&claims) {
        let name = volume["name"]
            .as_str()
            .or_else(|| volume["metadata"]["name"].as_str())
            .expect("a volume name");
        let at = here.join("volumes").join(name);
        std::fs::create_dir_all(&at).expect("mkdir");
        for (path, bytes, config) in store.files(volume, pod) {
            let file = at.join(&path);
            std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
            std::fs::write(&file, bytes).expect("write");
            if config {
                config_files.push(file);
            }
        }
        volumes.insert(name.to_owned(), at);
    }
    let mut mounts: Vec<(String, String)> = container["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .map(|m| {
            let volume = &volumes[m["name"].as_str().expect("name")];
            let sub = m["subPath"]
                .as_str()
                .map(str::to_owned)
                .or_else(|| m["subPathExpr"].as_str().map(&expand))
                .unwrap_or_default();
            let local = if sub.is_empty() {
                volume.clone()
            } else {
                volume.join(sub)
            };
            assert!(
                local.exists(),
                "{pod}: mount {m} has nothing at {}",
                local.display()
            );
            (
                m["mountPath"].as_str().expect("mountPath").to_owned(),
                local.display().to_string(),
            )
        })
        .collect();
    // Longest first: /etc/airlock/tls before /etc/airlock.
    mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
    let rewrite = |text: &str| {
        let mut text = text.to_owned();
        for (from, to) in addresses {
            text = text.replace(from.as_str(), to);
        }
        for (container_port, local) in ports {
            text = text.replace(
                &format!("0.0.0.0:{container_port}"),
                &format!("127.0.0.1:{local}"),
            );
        }
        for (path, local) in &mounts {
            text = text.replace(path.as_str(), local);
        }
        text
    };
    for file in &config_files {
        let text = std::fs::read_to_string(file).expect("a text file");
        std::fs::write(file, rewrite(&text)).expect("write");
    }

    let command: Vec<String> = container["command"]
        .as_array()
        .map(|c| {
            c.iter()
                .map(|a| a.as_str().expect("a string").to_owned())
                .collect()
        })
        .unwrap_or_default();
    let binary = match command.first().map(|c| c.rsplit('/').next().unwrap_or(c)) {
        Some(name @ ("airlock-proxy" | "airlock-control" | "airlock-reviewer")) => fresh_binary(name),
        Some(other) => panic!("{pod}: command {other} is not an Airlock binary"),
        // The NATS image's entry point.
        None => find_binary("nats-server", "AIRLOCK_NATS_SERVER", &[]),
    };
    let args: Vec<String> = command
        .iter()
        .skip(1)
        .map(String::as_str)
        .chain(
            container["args"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| a.as_str().expect("a string")),
        )
        .map(|a| rewrite(&expand(a)))
        .collect();

    let named: HashMap<String, u64> = container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_owned(),
                p["containerPort"].as_u64().expect("containerPort"),
            )
        })
        .collect();
    let readiness = container["readinessProbe"].get("httpGet").map(|get| {
        let port = match &get["port"] {
            Value::String(name) => named[name],
            other => other.as_u64().expect("a port"),
        };
        (get["path"].as_str().expect("path").to_owned(), ports[&port])
    });

    let log = here.join("log");
    let out = std::fs::File::create(&log).expect("log");
    let process = Command::new(binary)
        .args(&args)
        // Only what the manifest gives the container.
        .env_clear()
        .envs(env.iter().cloned())
        .current_dir(&here)
        .stdout(Stdio::from(out.try_clone().expect("log")))
        .stderr(Stdio::from(out))
        .spawn()
        .unwrap_or_else(|e| panic!("start {pod}: {e}"));
    Pod {
        name: pod.to_owned(),
        _process: Child(process),
        readiness,
        log,
    }
}

/// Logs of every pod, shown when the test fails.
struct Pods(Vec<Pod>);

impl Drop for Pods {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for pod in &self.0 {
            let text = std::fs::read_to_string(&pod.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!(
                "--- {} (last lines)\n{}",
                pod.name,
                lines[lines.len().saturating_sub(25)..].join("\n")
            );
        }
    }
}

/// Waits until every pod's readiness probe answers 200.
fn ready(pods: &[Pod], what: &str) {
    {
        for pod in pods {
            if let Some((path, port)) = &pod.readiness {
                eventually_blocking(
                    &format!("{what}: {} ready ({path} on {port})", pod.name),
                    Duration::from_secs(60),
                    || (http_get(*port, path).0 == 200).then_some(()),
                );
            }
        }
    }
}

fn replicas(workload: &Value) -> usize {
    workload["spec"]["replicas"].as_u64().expect("replicas") as usize
}

/// Free loopback ports for a workload's pods: container port to port.
fn ports_of(workload: &Value, pods: usize) -> Vec<HashMap<u64, u16>> {
    let container_ports: Vec<u64> = workload["spec"]["template"]["spec"]["containers"][0]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| p["containerPort"].as_u64().expect("containerPort"))
        .collect();
    (0..pods)
        .map(|_| container_ports.iter().map(|p| (*p, free_port())).collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_manifests_boot_and_a_held_delete_is_approved_through_them() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    let objects = manifests();
    let material = tokio::task::block_in_place(|| dev_material(root, &["--namespace", "airlock"]));

    // The database the proxies' connections name, with TLS, its roles'
    // passwords those of the Secrets.
    let pg = tokio::task::block_in_place(|| Postgres::start_with(PostgresOptions::default().tls()));
    std::fs::copy(pg.server_ca(), material.join("tls/db-ca.crt")).expect("the database's CA");
    let secrets_text = tokio::task::block_in_place(|| secrets_sh(&material));
    let store = Store::new(&objects, &documents(&secrets_text, "secrets.sh"));
    let maint = store.secret_value("airlock-db", "prod-orders");
    let report = store.secret_value("airlock-db", "reporting");
    pg.create_database("orders");
    pg.psql(
        "orders",
        &format!(
            "CREATE ROLE airlock_maint LOGIN PASSWORD '{maint}';
             CREATE ROLE airlock_report LOGIN PASSWORD '{report}';
             CREATE TABLE orders (id int PRIMARY KEY, note text);
             INSERT INTO orders SELECT g, 'order ' || g FROM generate_series(1, 3) g;
             GRANT SELECT, INSERT, UPDATE, DELETE ON orders TO airlock_maint;
             GRANT SELECT ON orders TO airlock_report;"
        ),
    );

    // Entra's stand-in.
    let idp_port = free_port();
    let issuer = format!("http://127.0.0.1:{idp_port}");
    let mut idp = Command::new(fresh_binary("airlock-dev-idp"));
    idp.arg("serve")
        .args(["--listen", &format!("127.0.0.1:{idp_port}"), "--issuer", &issuer])
        .arg("--key-file")
        .arg(root.join("idp.key"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _idp = Child(idp.spawn().expect("start airlock-dev-idp"));
    wait_port(idp_port, "airlock-dev-idp");

    // Every pod's ports, and every Service name as its loopback address.
    let nats = object(&objects, "StatefulSet", "nats");
    let control = object(&objects, "StatefulSet", "airlock-control");
    let proxy = object(&objects, "StatefulSet", "airlock-proxy");
    let reviewer = object(&objects, "Deployment", "airlock-reviewer");
    let nats_ports = ports_of(nats, replicas(nats));
    let control_ports = ports_of(control, replicas(control));
    let proxy_ports = ports_of(proxy, replicas(proxy));
    let reviewer_ports = ports_of(reviewer, replicas(reviewer));
    let control_service = free_port();
    balance(control_service, control_ports.iter().map(|p| p[&7070]).collect());
    let config = object(&objects, "ConfigMap", "airlock-config");
    let proxy_yaml: Value =
        serde_norway::from_str(config["data"]["proxy.yaml"].as_str().expect("proxy.yaml")).expect("yaml");
    let entra = proxy_yaml["identity"]["issuer"][0]
        .as_str()
        .expect("an issuer")
        .to_owned();
    let mut addresses = vec![
        (entra, issuer.clone()),
        (
            "airlock-control:7070".to_owned(),
            format!("127.0.0.1:{control_service}"),
        ),
        ("orders-db:5432".to_owned(), format!("127.0.0.1:{}", pg.port())),
    ];
    for (i, ports) in nats_ports.iter().enumerate() {
        addresses.push((
            format!("nats-{i}.nats:4222"),
            format!("127.0.0.1:{}", ports[&4222]),
        ));
        addresses.push((
            format!("nats-{i}.nats:6222"),
            format!("127.0.0.1:{}", ports[&6222]),
        ));
    }

    let mut pods = Pods(Vec::new());
    let mut start = |workload: &Value, names: Vec<String>, ports: &[HashMap<u64, u16>], what: &str| {
        let first = pods.0.len();
        for (name, ports) in names.iter().zip(ports) {
            pods.0
                .push(start_pod(workload, name, root, &store, &addresses, ports));
        }
        tokio::task::block_in_place(|| ready(&pods.0[first..], what));
    };
    let ordinal = |base: &str, n: usize| (0..n).map(|i| format!("{base}-{i}")).collect::<Vec<_>>();
    start(nats, ordinal("nats", nats_ports.len()), &nats_ports, "NATS");
    start(
        control,
        ordinal("airlock-control", control_ports.len()),
        &control_ports,
        "control plane",
    );
    start(
        proxy,
        ordinal("airlock-proxy", proxy_ports.len()),
        &proxy_ports,
        "proxies",
    );
    start(
        reviewer,
        ["airlock-reviewer-7d9f-a", "airlock-reviewer-7d9f-b"][..reviewer_ports.len()]
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
        &reviewer_ports,
        "reviewers",
    );

    // Tokens for the groups the configuration names.
    let group = |name: &str| {
        proxy_yaml["identity"]["group_names"][name]
            .as_str()
            .unwrap_or_else(|| panic!("no group {name}"))
            .to_owned()
    };
    let token = |args: &[&str]| {
        let out = Command::new(fresh_binary("airlock-dev-idp"))
            .arg("token")
            .arg("--key-file")
            .arg(root.join("idp.key"))
            .args(["--issuer", &issuer, "--audience"])
            .arg(proxy_yaml["identity"]["audience"].as_str().expect("audience"))
            .args(args)
            .output()
            .expect("mint a token");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let agents = group("db-maintenance-agents");
    let reviewers = group("db-reviewers");
    let agent = token(&[
        "--sub",
        "oid-agent",
        "--name",
        "maintenance agent",
        "--app",
        "--group",
        &agents,
    ]);
    let alice = token(&["--sub", "oid-alice", "--name", "Alice", "--group", &reviewers]);
    let alice_mfa = token(&[
        "--sub",
        "oid-alice",
        "--name",
        "Alice",
        "--group",
        &reviewers,
        "--acr",
        "c1",
    ]);

    // The agent, through the second proxy, over TLS checked against the
    // proxies' certificate.
    let psql = find_binary("psql", "AIRLOCK_PG_PSQL", &[]);
    let delete = Command::new(&psql)
        .arg(format!(
            "host=127.0.0.1 port={} dbname=prod-orders user=agent sslmode=verify-full sslrootcert={}",
            proxy_ports[proxy_ports.len() - 1][&6432],
            material.join("tls/ca.crt").display()
        ))
        .args(["-v", "ON_ERROR_STOP=1", "-c", "DELETE FROM orders WHERE id = 2"])
        .env("PGPASSWORD", &agent)
        .env("PGCONNECT_TIMEOUT", "10")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run psql");

    let http = reqwest::Client::new();
    let api = |i: usize| format!("http://127.0.0.1:{}/api/v1", reviewer_ports[i][&8080]);
    let request = airlock_testkit::eventually(
        "the held DELETE listed by the reviewer service",
        Duration::from_secs(30),
        || {
            let (http, url, alice) = (
                http.clone(),
                format!("{}/requests?state=pending", api(0)),
                alice.clone(),
            );
            async move {
                let listed: Value = http
                    .get(url)
                    .bearer_auth(alice)
                    .send()
                    .await
                    .map_err(|e| vec![e.to_string()])?
                    .json()
                    .await
                    .map_err(|e| vec![e.to_string()])?;
                listed["requests"]
                    .as_array()
                    .and_then(|r| r.first())
                    .and_then(|r| r["id"].as_str())
                    .map(str::to_owned)
                    .ok_or_else(|| vec![format!("nothing pending yet: {listed}")])
            }
        },
    )
    .await;
    let approve = |token: String, i: usize| {
        http.post(format!("{}/requests/{request}/approve", api(i)))
            .bearer_auth(token)
            .json(&serde_json::json!({"reason": "stale test order"}))
            .send()
    };
    // approvals.require_acrs: a sign-in without MFA is sent to step up.
    let refused = approve(alice.clone(), 1).await.expect("vote");
    assert_eq!(refused.status(), 403);
    let body: Value = refused.json().await.expect("json");
    assert_eq!(body["error"]["code"], "step_up_required", "{body}");
    let granted = approve(alice_mfa, 1).await.expect("vote");
    assert_eq!(
        granted.status(),
        200,
        "{}",
        granted.text().await.unwrap_or_default()
    );

    let out = tokio::task::block_in_place(|| delete.wait_with_output()).expect("psql");
    assert!(
        out.status.success(),
        "the approved DELETE: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("DELETE 1"));
    assert_eq!(
        pg.psql("orders", "SELECT count(*) FROM orders WHERE id = 2")
            .trim(),
        "0"
    );
    assert_eq!(pg.psql("orders", "SELECT count(*) FROM orders").trim(), "2");
    drop(pods);
}
