//! GCE's metadata server: `/computeMetadata/v1/` with `Metadata-Flavor: Google` on every
//! request (it answers 403 without it); user-data in the instance attribute `user-data`
//! (404: none).

use crate::http::Http;

use super::ec2::found;
use super::Fetched;

pub fn fetch(http: &Http, base: &str) -> Result<Fetched, String> {
    let get = |path: &str| -> Result<Option<Vec<u8>>, String> {
        let url = format!("{base}/computeMetadata/v1/{path}");
        found(
            http.request("GET", &url, &[("Metadata-Flavor", "Google")])?,
            &url,
        )
    };
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).trim().to_string();
    let instance_id = get("instance/id")?.map(text).ok_or("no instance/id")?;
    Ok(Fetched {
        source: "GCE metadata server".into(),
        instance_id: Some(instance_id),
        hostname: get("instance/hostname")?.map(text),
        user_data: get("instance/attributes/user-data")?,
        ..Fetched::default()
    })
}
