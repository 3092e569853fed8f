//! A test CA and a server certificate it signed, made with openssl for one test (the
//! metrics endpoint's and the syslog receiver's TLS).

use std::path::Path;
use std::process::Command;

/// Writes `ca.pem`, `server.pem` and `server.key` in `dir` (the server's certificate
/// for the address `ip`); returns the server's certificate and key, PEM.
pub fn make(dir: &Path, ip: &str) -> (String, String) {
    let sh = |script: &str| {
        let out = Command::new("sh")
            .arg("-ec")
            .arg(script)
            .current_dir(dir)
            .output()
            .expect("sh");
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sh(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout ca.key -out ca.pem -days 2 -subj /CN=berth-test-ca 2>/dev/null",
    );
    sh(
        "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout server.key -out server.csr -subj /CN=berth-test-server 2>/dev/null",
    );
    sh(&format!(
        "printf 'subjectAltName=IP:{ip}\\nbasicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth\\n' > ext; \
         openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
         -out server.pem -days 2 -extfile ext 2>/dev/null"
    ));
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    (read("server.pem"), read("server.key"))
}

/// `text` as a YAML block scalar's lines, indented by `indent` blanks.
pub fn yaml_block(text: &str, indent: usize) -> String {
    text.lines()
        .map(|l| format!("{:indent$}{l}\n", ""))
        .collect()
}
