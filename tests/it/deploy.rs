//! The image and the Kubernetes manifests agree with each other and with
//! the daemon: every manifest is parsed, its sidecar's settings started
//! for real, and its probes asked on the ports and paths it names.

use crate::support::{event, Client, Daemon, DaemonOptions};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const SIDECAR: &str = "processmanager";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Every document of every manifest, by file name.
fn manifests() -> Vec<(String, Value)> {
    let mut found = Vec::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(repo("deploy/kubernetes"))
        .expect("deploy/kubernetes exists")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path).unwrap();
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(document)
                .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            assert!(value["apiVersion"].is_string(), "{name}: no apiVersion");
            assert!(value["kind"].is_string(), "{name}: no kind");
            found.push((name, value));
        }
    }
    assert!(found.len() >= 3, "the manifests are there: {found:?}");
    found
}

/// What the Containerfile says: its `ENV` settings, `USER`, `VOLUME` and
/// `EXPOSE`d ports.
struct Image {
    env: BTreeMap<String, String>,
    user: String,
    volume: String,
    exposed: Vec<u16>,
}

fn image() -> Image {
    let text = std::fs::read_to_string(repo("Containerfile")).unwrap();
    // Join continued lines, drop comments.
    let joined = text
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("\\\n", " ");
    let mut image = Image {
        env: BTreeMap::new(),
        user: String::new(),
        volume: String::new(),
        exposed: Vec::new(),
    };
    for line in joined.lines() {
        let Some((instruction, rest)) = line.trim().split_once(' ') else {
            continue;
        };
        match instruction {
            "ENV" => {
                for pair in rest.split_whitespace() {
                    let (name, value) = pair.split_once('=').expect("ENV NAME=value");
                    image.env.insert(name.into(), value.into());
                }
            }
            "USER" => image.user = rest.trim().into(),
            "VOLUME" => {
                let volumes: Vec<String> = serde_json::from_str(rest).expect("VOLUME [\"...\"]");
                image.volume = volumes[0].clone();
            }
            "EXPOSE" => image.exposed.extend(
                rest.split_whitespace()
                    .map(|port| port.parse::<u16>().unwrap()),
            ),
            "ENTRYPOINT" => {
                let entrypoint: Vec<String> = serde_json::from_str(rest).expect("exec form");
                assert_eq!(entrypoint[1..], ["serve"], "the image runs the daemon");
            }
            _ => {}
        }
    }
    image
}

fn port_of(address: &str) -> u16 {
    address.rsplit(':').next().unwrap().parse().unwrap()
}

/// The pod template of a workload, or the pod itself.
fn pod_spec(document: &Value) -> Option<(&Value, &Value)> {
    match document["kind"].as_str()? {
        "Pod" => Some((&document["metadata"], &document["spec"])),
        "StatefulSet" | "Deployment" => Some((
            &document["spec"]["template"]["metadata"],
            &document["spec"]["template"]["spec"],
        )),
        _ => None,
    }
}

fn secrets(documents: &[(String, Value)]) -> BTreeMap<(String, String), String> {
    let mut values = BTreeMap::new();
    for (_, document) in documents {
        if document["kind"] == "Secret" {
            let name = document["metadata"]["name"].as_str().unwrap().to_owned();
            for (key, value) in document["stringData"].as_object().unwrap() {
                values.insert((name.clone(), key.clone()), value.as_str().unwrap().into());
            }
        }
    }
    values
}

/// An env list with its Secret references resolved.
fn env_of(
    container: &Value,
    secrets: &BTreeMap<(String, String), String>,
) -> BTreeMap<String, String> {
    container["env"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|variable| {
            let name = variable["name"].as_str().unwrap().to_owned();
            let value = match variable["value"].as_str() {
                Some(value) => value.to_owned(),
                None => {
                    let reference = &variable["valueFrom"]["secretKeyRef"];
                    let key = (
                        reference["name"].as_str().unwrap().to_owned(),
                        reference["key"].as_str().unwrap().to_owned(),
                    );
                    secrets
                        .get(&key)
                        .unwrap_or_else(|| panic!("{name}: no Secret {key:?}"))
                        .clone()
                }
            };
            (name, value)
        })
        .collect()
}

#[test]
fn every_manifest_agrees_with_the_image_and_the_daemon_serves_its_probes() {
    let image = image();
    assert_eq!(image.user, "65532:65532");
    let data_dir = &image.env["PM_DATA_DIR"];
    assert_eq!(&image.volume, data_dir, "the volume is the data directory");
    let image_probe_port = port_of(&image.env["PM_PROBE_LISTEN"]);
    assert!(image.exposed.contains(&image_probe_port));
    assert!(image.exposed.contains(&port_of(&image.env["PM_LISTEN"])));

    let documents = manifests();
    let secrets = secrets(&documents);
    let mut pods = 0;
    for (file, document) in &documents {
        let Some((metadata, spec)) = pod_spec(document) else {
            continue;
        };
        pods += 1;
        let sidecar = spec["initContainers"]
            .as_array()
            .and_then(|containers| containers.iter().find(|c| c["name"] == SIDECAR))
            .unwrap_or_else(|| panic!("{file}: ProcessManager is not a native sidecar"));
        assert_eq!(
            sidecar["restartPolicy"], "Always",
            "{file}: a native sidecar"
        );
        let env = env_of(sidecar, &secrets);

        // The API on loopback; probes on every address, on the image's port.
        assert!(env["PM_LISTEN"].starts_with("127.0.0.1:"), "{file}");
        let probe_port = port_of(&env["PM_PROBE_LISTEN"]);
        assert_eq!(probe_port, image_probe_port, "{file}");
        let port_named = |name: &str| -> u16 {
            let ports = sidecar["ports"].as_array().unwrap();
            let port = ports.iter().find(|port| port["name"] == name).unwrap();
            u16::try_from(port["containerPort"].as_u64().unwrap()).unwrap()
        };
        let annotations = &metadata["annotations"];
        assert_eq!(annotations["prometheus.io/scrape"], "true", "{file}");
        assert_eq!(annotations["prometheus.io/path"], "/metrics", "{file}");
        assert_eq!(
            annotations["prometheus.io/port"].as_str().unwrap(),
            probe_port.to_string(),
            "{file}"
        );

        // The store's volume at the data directory.
        assert_eq!(&env["PM_DATA_DIR"], data_dir, "{file}");
        let mount = sidecar["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|mount| mount["mountPath"] == data_dir.as_str())
            .unwrap_or_else(|| panic!("{file}: nothing mounted at {data_dir}"));
        let volume = mount["name"].as_str().unwrap();
        let in_pod = spec["volumes"]
            .as_array()
            .and_then(|volumes| volumes.iter().find(|v| v["name"] == volume));
        let claimed = document["spec"]["volumeClaimTemplates"]
            .as_array()
            .is_some_and(|claims| claims.iter().any(|c| c["metadata"]["name"] == volume));
        match in_pod {
            Some(volume) => assert!(
                volume["emptyDir"]["sizeLimit"].is_string()
                    || volume["persistentVolumeClaim"].is_object(),
                "{file}: an emptyDir has a sizeLimit"
            ),
            None => assert!(claimed, "{file}: the volume {volume} is claimed"),
        }

        // The image's user, and nothing more than it needs.
        let security = &sidecar["securityContext"];
        assert_eq!(
            format!("{}:{}", security["runAsUser"], security["runAsGroup"]),
            image.user,
            "{file}"
        );
        assert_eq!(security["runAsNonRoot"], true, "{file}");
        assert_eq!(security["readOnlyRootFilesystem"], true, "{file}");
        assert_eq!(security["allowPrivilegeEscalation"], false, "{file}");
        assert_eq!(
            security["capabilities"]["drop"],
            serde_json::json!(["ALL"]),
            "{file}"
        );
        assert_eq!(spec["securityContext"]["fsGroup"], 65532, "{file}");

        // The grace period covers the preStop pause and the daemon's own
        // drain and final commit (10 s by the contract).
        let pause = sidecar["lifecycle"]["preStop"]["sleep"]["seconds"]
            .as_u64()
            .unwrap_or_else(|| panic!("{file}: a preStop sleep"));
        let grace = spec["terminationGracePeriodSeconds"].as_u64().unwrap();
        assert!(
            grace >= pause + 10,
            "{file}: grace {grace}s, pause {pause}s"
        );

        // The daemon started with the sidecar's settings (ports and data
        // directory moved to free ones here) answers each probe where the
        // manifest points it.
        let temp = tempfile::tempdir().unwrap();
        let mut options = DaemonOptions::default()
            .data_dir(&temp.path().join("data"))
            .arg("--probe-listen")
            .arg("127.0.0.1:0");
        for (name, value) in &env {
            if !["PM_LISTEN", "PM_PROBE_LISTEN", "PM_DATA_DIR"].contains(&name.as_str()) {
                options = options.env(name, value);
            }
        }
        let daemon = Daemon::start_with(options);
        let probes = Client::new(daemon.probe_addr());
        for (kind, path) in [
            ("startupProbe", "/readyz"),
            ("readinessProbe", "/readyz"),
            ("livenessProbe", "/livez"),
        ] {
            let probe = &sidecar[kind]["httpGet"];
            assert_eq!(probe["path"], path, "{file}: {kind}");
            let port = match &probe["port"] {
                Value::String(name) => port_named(name),
                number => u16::try_from(number.as_u64().unwrap()).unwrap(),
            };
            assert_eq!(port, probe_port, "{file}: {kind} asks the probe listener");
            assert!(
                sidecar[kind]["timeoutSeconds"].as_u64().unwrap_or(1) >= 1,
                "{file}: {kind}"
            );
            assert_eq!(probes.get(path).status, 200, "{file}: {kind} {path}");
        }
        let scrape = probes.get(annotations["prometheus.io/path"].as_str().unwrap());
        assert_eq!(scrape.status, 200, "{file}: the scrape");
        // The application reaches the API with what its manifest gives it.
        let app = spec["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] != SIDECAR)
            .unwrap();
        let app_env = env_of(app, &secrets);
        assert_eq!(
            port_of(&app_env["PROCESSMANAGER_URL"]),
            port_of(&env["PM_LISTEN"]),
            "{file}: the application's URL is the sidecar's API"
        );
        let mut client = daemon.client();
        if let Some(token) = app_env.get("PROCESSMANAGER_TOKEN") {
            client = client.with_token(token);
        }
        let posted = client.post(&event("process.started", "from-the-app"));
        assert_eq!(posted.status, 202, "{file}: {}", posted.text);
    }
    assert!(pods >= 2, "a StatefulSet and a throwaway pod");
}
