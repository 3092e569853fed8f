//! A cloud's metadata service, emulated in the test process on 127.0.0.1 and reached by
//! the guest at 169.254.169.254:80 through QEMU's guestfwd: EC2's IMDS (IMDSv2 tokens
//! required, or IMDSv1 only), GCE's metadata server (403 without `Metadata-Flavor:
//! Google`), OpenStack's metadata service. Every request is recorded. Each hands out
//! the tests' operator SSH key (common/ssh.rs) the way that cloud does; GCE also has a
//! project key, which its instance blocks.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use crate::common::ssh;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Cloud {
    /// EC2 on Nitro: IMDSv2, GETs without the token refused (401).
    Ec2Imdsv2,
    /// An IMDSv1-only service (the token PUT answered 404).
    Ec2Imdsv1,
    Gce,
    OpenStack,
    /// Takes every connection and never answers (a metadata service that hangs).
    Silent,
    /// A plain web server with the user-data at /berth/user-data (berth.config_url).
    Url,
}

pub const TOKEN: &str = "AQAEAN-test-token";
pub const INSTANCE_ID: &str = "i-0b22a22eec53b9321";

pub struct Metadata {
    pub port: u16,
    /// "METHOD PATH header-of-note" per request, in order.
    pub requests: Arc<Mutex<Vec<String>>>,
}

impl Metadata {
    /// The user network with the metadata address forwarded here (QEMU 7.2 takes a
    /// guestfwd address only inside the user network).
    pub fn netdev(&self, id: &str) -> String {
        format!(
            "user,id={id},restrict=on,net=169.254.169.0/24,host=169.254.169.2,\
             dhcpstart=169.254.169.15,\
             guestfwd=tcp:169.254.169.254:80-cmd:socat - TCP:127.0.0.1:{}",
            self.port
        )
    }

    /// [`Self::netdev`] with the guest's SSH port forwarded from 127.0.0.1:`ssh`.
    pub fn netdev_with_ssh(&self, id: &str, ssh: u16) -> String {
        format!("{},hostfwd=tcp:127.0.0.1:{ssh}-:22", self.netdev(id))
    }
}

pub fn start(cloud: Cloud, user_data: &'static [u8], hostname: &'static str) -> Metadata {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let log = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let log = log.clone();
            std::thread::spawn(move || serve(stream, cloud, user_data, hostname, &log));
        }
    });
    Metadata { port, requests }
}

fn serve(
    stream: TcpStream,
    cloud: Cloud,
    user_data: &[u8],
    hostname: &str,
    log: &Mutex<Vec<String>>,
) {
    if cloud == Cloud::Silent {
        log.lock().unwrap().push("connection".into());
        std::thread::sleep(std::time::Duration::from_secs(600));
        return;
    }
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let noted = match cloud {
            Cloud::Ec2Imdsv2 | Cloud::Ec2Imdsv1 => header("x-aws-ec2-metadata-token")
                .map(|t| format!(" token={t}"))
                .unwrap_or_default(),
            Cloud::Gce => header("metadata-flavor")
                .map(|f| format!(" flavor={f}"))
                .unwrap_or_default(),
            Cloud::OpenStack | Cloud::Silent | Cloud::Url => String::new(),
        };
        log.lock().unwrap().push(format!("{method} {path}{noted}"));
        let (status, body) = answer(cloud, &method, &path, &header, user_data, hostname);
        let reason = match status {
            200 => "OK",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            _ => "Other",
        };
        let head = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n",
            body.len()
        );
        if out.write_all(head.as_bytes()).is_err() || out.write_all(&body).is_err() {
            return;
        }
    }
}

fn answer(
    cloud: Cloud,
    method: &str,
    path: &str,
    header: &dyn Fn(&str) -> Option<String>,
    user_data: &[u8],
    hostname: &str,
) -> (u16, Vec<u8>) {
    let ok = |b: &[u8]| (200, b.to_vec());
    match cloud {
        Cloud::Ec2Imdsv2 | Cloud::Ec2Imdsv1 => {
            if method == "PUT" && path == "/latest/api/token" {
                return match cloud {
                    Cloud::Ec2Imdsv2
                        if header("x-aws-ec2-metadata-token-ttl-seconds").is_some() =>
                    {
                        ok(TOKEN.as_bytes())
                    }
                    Cloud::Ec2Imdsv2 => (400, vec![]),
                    _ => (404, vec![]),
                };
            }
            if cloud == Cloud::Ec2Imdsv2
                && header("x-aws-ec2-metadata-token").as_deref() != Some(TOKEN)
            {
                return (401, vec![]);
            }
            match path {
                "/latest/meta-data/instance-id" => ok(INSTANCE_ID.as_bytes()),
                "/latest/meta-data/local-hostname" => ok(hostname.as_bytes()),
                "/latest/meta-data/public-keys/" => ok(b"0=berth-operator"),
                "/latest/meta-data/public-keys/0/openssh-key" => {
                    ok(format!("{}\n", ssh::operator().public).as_bytes())
                }
                "/latest/user-data" => ok(user_data),
                _ => (404, vec![]),
            }
        }
        Cloud::Gce => {
            if header("metadata-flavor").as_deref() != Some("Google") {
                return (403, b"Missing Metadata-Flavor:Google header.".to_vec());
            }
            match path {
                "/computeMetadata/v1/instance/id" => ok(b"4520031799277581759"),
                "/computeMetadata/v1/instance/hostname" => ok(hostname.as_bytes()),
                "/computeMetadata/v1/instance/attributes/user-data" => ok(user_data),
                "/computeMetadata/v1/instance/attributes/ssh-keys" => {
                    ok(format!("operator:{}\n", ssh::operator().public).as_bytes())
                }
                "/computeMetadata/v1/instance/attributes/block-project-ssh-keys" => ok(b"true"),
                "/computeMetadata/v1/project/attributes/ssh-keys" => {
                    ok(format!("someone:{}\n", ssh::project().public).as_bytes())
                }
                _ => (404, vec![]),
            }
        }
        Cloud::Silent => (404, vec![]),
        Cloud::Url => match path {
            "/berth/user-data" => ok(user_data),
            _ => (404, vec![]),
        },
        Cloud::OpenStack => match path {
            "/openstack/latest/meta_data.json" => ok(format!(
                "{{\"uuid\": \"{INSTANCE_ID}\", \"hostname\": \"{hostname}\", \"name\": \"vm\", \
                 \"public_keys\": {{\"berth-operator\": \"{}\"}}}}",
                ssh::operator().public
            )
            .as_bytes()),
            "/openstack/latest/user_data" => ok(user_data),
            _ => (404, vec![]),
        },
    }
}
