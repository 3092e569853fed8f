//! The agent on each cloud, its metadata service emulated by a test server speaking the
//! real protocol (common/metadata.rs), the platform set with `-smbios`: EC2 on Nitro
//! (DMI vendor `Amazon EC2`, IMDSv2 tokens required), Xen-era EC2 (a product UUID
//! beginning `ec2`, an IMDSv1-only service), GCE (403 without its header), OpenStack's
//! metadata service (product `OpenStack Nova`). Each brings the machine up with the
//! user-data's hostname and container running, and the metadata's instance id, and lets
//! the operator in over SSH with the key that cloud's metadata hands out (GCE's project
//! key, which the instance blocks, does not). And one that never answers, which delays
//! the boot by the agent's bounded budget only.

use crate::common::metadata::{self, Cloud};
use crate::common::{boot, disk_config, new_disk, ssh};
use berth_tests::testd::TestdClient;

const USER_DATA: &[u8] = b"#cloud-config\nhostname: from-user-data\nberth:\n  containers:\n    ticker:\n      \
image: berth.local/busybox:latest\n      command: [\"sh\", \"-c\", \"while true; do echo tick; sleep 1; done\"]\n      \
network: none\n";

fn sh(testd: &mut TestdClient, script: &str) -> String {
    let out = testd.sh(script).unwrap();
    format!("{}{}", out.stdout, out.stderr)
}

/// Boots with `smbios` on `cloud`'s emulated service (its metadata naming the machine
/// `hostname`, which the user-data's own hostname overrides); checks the instance id
/// came from the metadata; returns the requests the service saw.
fn boot_on(cloud: Cloud, smbios: &str, hostname: &'static str) -> Vec<String> {
    let (requests, report) = boot_with(
        cloud,
        USER_DATA,
        Some(smbios),
        "",
        hostname,
        "from-user-data",
    );
    assert!(report.contains("\"instance_id\": \""), "{report}");
    requests
}

/// Boots on `cloud`'s emulated service serving `user_data` (and `served` as the
/// metadata's hostname), with `smbios` and `append` (kernel command line); checks the
/// machine is called `expected` and runs the ticker. The requests the service saw and
/// the agent's report.
fn boot_with(
    cloud: Cloud,
    user_data: &'static [u8],
    smbios: Option<&str>,
    append: &str,
    served: &'static str,
    expected: &str,
) -> (Vec<String>, String) {
    let server = metadata::start(cloud, user_data, served);
    let t = tempfile::tempdir().unwrap();
    new_disk(t.path());
    let mut cfg = disk_config(&format!("cloud-{cloud:?}").to_lowercase(), t.path());
    cfg.append += append;
    if let Some(s) = smbios {
        cfg.extra_args = vec!["-smbios".into(), s.into()];
    }
    let ssh_port = berth_tests::http::free_port();
    cfg.extra_args.extend([
        "-netdev".into(),
        server.netdev_with_ssh("n0", ssh_port),
        "-device".into(),
        "virtio-net-pci,netdev=n0".into(),
    ]);
    let vm = boot(cfg);
    let console = vm.console();
    let ready = console
        .lines()
        .find(|l| l.starts_with("berth: ready"))
        .unwrap_or_else(|| panic!("no ready line: {console}"))
        .to_string();
    assert!(
        ready.contains(&format!("hostname {expected},")),
        "{ready}\n{console}"
    );
    let mut testd = vm.testd().expect("testd");
    crate::common::assert_running(&mut testd, "ticker");
    let report = sh(&mut testd, "cat /run/berth/agent/report.json");
    assert!(report.contains("\"errors\": []"), "{report}");
    if matches!(
        cloud,
        Cloud::Ec2Imdsv2 | Cloud::Ec2Imdsv1 | Cloud::Gce | Cloud::OpenStack
    ) {
        let ps = ssh::wait_for_login(ssh_port);
        assert!(
            ps.status.success() && String::from_utf8_lossy(&ps.stdout).contains("ticker"),
            "ssh with {cloud:?}'s key: {}",
            ssh::text(&ps)
        );
        if cloud == Cloud::Gce {
            let o = ssh::run(ssh_port, ssh::project(), &[], "ps");
            assert_eq!(
                o.status.code(),
                Some(255),
                "a blocked project key: {}",
                ssh::text(&o)
            );
        }
    }
    let requests = server.requests.lock().unwrap().clone();
    (requests, report)
}

#[test]
fn ec2_nitro_with_imdsv2() {
    let requests = boot_on(
        Cloud::Ec2Imdsv2,
        "type=1,manufacturer=Amazon EC2,product=m7i.large",
        "ip-10-0-1-23.ec2.internal",
    );
    assert!(
        requests.iter().any(|r| r == "PUT /latest/api/token"),
        "{requests:?}"
    );
    let gets: Vec<&String> = requests.iter().filter(|r| r.starts_with("GET")).collect();
    assert!(!gets.is_empty());
    assert!(
        gets.iter()
            .all(|r| r.ends_with(&format!("token={}", metadata::TOKEN))),
        "a GET without the token: {requests:?}"
    );
}

#[test]
fn ec2_xen_falls_back_to_imdsv1() {
    let requests = boot_on(
        Cloud::Ec2Imdsv1,
        "type=1,manufacturer=Xen,product=HVM domU,uuid=ec2e1916-9099-7caf-fd21-012345678901",
        "ip-10-0-1-24.ec2.internal",
    );
    assert!(
        requests.iter().any(|r| r == "GET /latest/user-data"),
        "{requests:?}"
    );
}

#[test]
fn gce_with_its_header() {
    let requests = boot_on(
        Cloud::Gce,
        "type=1,manufacturer=Google,product=Google Compute Engine",
        "gce-vm-1.c.project.internal",
    );
    assert!(
        requests.iter().all(|r| r.ends_with("flavor=Google")),
        "{requests:?}"
    );
}

#[test]
fn openstack_metadata_service() {
    let requests = boot_on(
        Cloud::OpenStack,
        "type=1,manufacturer=OpenStack Foundation,product=OpenStack Nova",
        "os-vm-1",
    );
    assert!(
        requests
            .iter()
            .any(|r| r == "GET /openstack/latest/meta_data.json"),
        "{requests:?}"
    );
}

/// `berth.config_url=` on the kernel command line of a machine with no datasource.
#[test]
fn config_url_on_the_kernel_command_line() {
    const NAMED: &[u8] = b"#cloud-config\nhostname: from-url\nberth:\n  containers:\n    ticker:\n      \
image: berth.local/busybox:latest\n      command: [\"sh\", \"-c\", \"while true; do echo tick; sleep 1; done\"]\n      \
network: none\n";
    let (requests, _) = boot_with(
        Cloud::Url,
        NAMED,
        None,
        " berth.config_url=http://169.254.169.254/berth/user-data",
        "from-url",
        "from-url",
    );
    assert_eq!(
        requests.first().map(String::as_str),
        Some("GET /berth/user-data")
    );
}

/// A metadata service that takes connections and never answers costs the boot a bounded
/// time: the agent gives up within its budget, says so, and the machine comes up with
/// the defaults.
#[test]
fn a_silent_metadata_service_does_not_hang_the_boot() {
    let server = metadata::start(Cloud::Silent, USER_DATA, "unused");
    let t = tempfile::tempdir().unwrap();
    new_disk(t.path());
    let mut cfg = disk_config("cloud-silent", t.path());
    // The default wait is 60 s; the test shortens it the way an operator would.
    cfg.append += " berth.datasource.timeout=8";
    cfg.extra_args = vec![
        "-smbios".into(),
        "type=1,manufacturer=Amazon EC2,product=m7i.large".into(),
        "-netdev".into(),
        server.netdev("n0"),
        "-device".into(),
        "virtio-net-pci,netdev=n0".into(),
    ];
    let vm = boot(cfg);
    let console = vm.console();
    assert!(
        console.contains("berth-agent: Ec2 metadata service:")
            && console.contains("gave up after 8 s"),
        "{console}"
    );
    let ready = console
        .lines()
        .find(|l| l.starts_with("berth: ready"))
        .unwrap_or_else(|| panic!("no ready line: {console}"));
    assert!(crate::common::all_services_ready(ready, 4), "{ready}");
    assert!(!server.requests.lock().unwrap().is_empty());
}
