use super::*;
use std::io::Write;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[test]
fn gzip_user_data_and_the_bomb() {
    let (s, report) = parse(&gzip(b"#cloud-config\nhostname: zipped\n"));
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!(s.hostname.as_deref(), Some("zipped"));
    let bomb = gzip(&vec![b'a'; MAX_INFLATED + 1]);
    assert!(bomb.len() < MAX_DOCUMENT);
    let (s, report) = parse(&bomb);
    assert_eq!(s, Settings::default());
    assert!(report.errors[0].message.contains("gzip bomb"), "{report:?}");
    let (_, report) = parse(&[0x1f, 0x8b, 1, 2, 3]);
    assert!(
        report.errors[0].message.contains("not valid gzip"),
        "{report:?}"
    );
}

#[test]
fn formats_told_apart() {
    let (s, report) = parse(b"hostname = \"from-toml\"\n");
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!(s.hostname.as_deref(), Some("from-toml"));
    let (_, report) = parse(b"#!/bin/sh\necho hi\n");
    assert!(
        report.warnings[0].message.contains("is not run"),
        "{report:?}"
    );
    let (_, report) = parse(b"#include https://example.org/x\n");
    assert!(
        report.errors[0].message.contains("not supported"),
        "{report:?}"
    );
    let (_, report) = parse(b"hostname: yaml-without-header\n");
    assert!(
        report.errors[0]
            .message
            .contains("first line must be `#cloud-config`"),
        "{report:?}"
    );
    let (_, report) = parse(&[0xff, 0xfe, 0x00, 0x41]);
    assert!(
        report.errors[0].message.contains("neither text"),
        "{report:?}"
    );
    let (_, report) = parse(&vec![b'#'; MAX_DOCUMENT + 1]);
    assert!(report.errors[0].message.contains("at most"), "{report:?}");
    let (s, report) = parse(b"");
    assert_eq!((s, report), (Settings::default(), Report::default()));
}

#[test]
fn mime_multipart_takes_the_cloud_config_parts() {
    let text = "Content-Type: multipart/mixed; boundary=\"==BOUNDARY==\"\r\n\
MIME-Version: 1.0\r\n\
\r\n\
--==BOUNDARY==\r\n\
Content-Type: text/cloud-config; charset=\"us-ascii\"\r\n\
\r\n\
#cloud-config\r\n\
hostname: first\r\n\
fqdn: first.example\r\n\
\r\n\
--==BOUNDARY==\r\n\
Content-Type: text/x-shellscript\r\n\
\r\n\
#!/bin/sh\r\n\
echo hi\r\n\
--==BOUNDARY==\r\n\
Content-Type: text/cloud-config\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
I2Nsb3VkLWNvbmZpZwpob3N0bmFtZTogc2Vjb25kCg==\r\n\
--==BOUNDARY==--\r\n";
    let (s, report) = parse(text.as_bytes());
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!(s.hostname.as_deref(), Some("second"), "later parts win");
    assert_eq!(s.fqdn.as_deref(), Some("first.example"));
    assert!(
        report.warnings[0]
            .message
            .contains("text/x-shellscript is not run"),
        "{report:?}"
    );
}
