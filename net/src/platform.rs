//! Which cloud this is, from DMI (`/sys/class/dmi/id`), as cloud-init's ds-identify
//! tells them apart: EC2 says `Amazon EC2` (Nitro) or has a product UUID beginning
//! `ec2` (Xen-era), GCE says `Google`/`Google Compute Engine`, OpenStack's Nova says
//! `OpenStack Nova`/`OpenStack Compute` (or its vendor `OpenStack Foundation`).
//! Shared by berth-net (the cloud's time server) and the agent (its datasource).

use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    Ec2,
    Gce,
    OpenStack,
    /// QEMU, bare metal, anything else: local datasources only.
    Other,
}

pub const DMI: &str = "/sys/class/dmi/id";

pub fn detect(dmi: &Path) -> Platform {
    let read = |f: &str| {
        std::fs::read_to_string(dmi.join(f))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let vendor = read("sys_vendor");
    let product = read("product_name");
    let uuid = read("product_uuid").to_ascii_lowercase();
    if vendor == "Amazon EC2" || uuid.starts_with("ec2") {
        Platform::Ec2
    } else if vendor == "Google" || product == "Google Compute Engine" {
        Platform::Gce
    } else if product == "OpenStack Nova"
        || product == "OpenStack Compute"
        || vendor == "OpenStack Foundation"
    {
        Platform::OpenStack
    } else {
        Platform::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clouds_from_dmi() {
        let t = tempfile::tempdir().unwrap();
        let dmi = |vendor: &str, product: &str, uuid: &str| {
            std::fs::write(t.path().join("sys_vendor"), format!("{vendor}\n")).unwrap();
            std::fs::write(t.path().join("product_name"), format!("{product}\n")).unwrap();
            std::fs::write(t.path().join("product_uuid"), format!("{uuid}\n")).unwrap();
            detect(t.path())
        };
        assert_eq!(dmi("Amazon EC2", "m7g.large", "ab12"), Platform::Ec2);
        assert_eq!(dmi("Xen", "HVM domU", "EC2E1916-9099-7CAF"), Platform::Ec2);
        assert_eq!(dmi("Google", "Google Compute Engine", "x"), Platform::Gce);
        assert_eq!(dmi("QEMU", "OpenStack Nova", "x"), Platform::OpenStack);
        assert_eq!(
            dmi("OpenStack Foundation", "OpenStack Compute", "x"),
            Platform::OpenStack
        );
        assert_eq!(
            dmi("QEMU", "Standard PC (Q35 + ICH9, 2009)", "x"),
            Platform::Other
        );
        assert_eq!(detect(Path::new("/nonexistent")), Platform::Other);
    }
}
