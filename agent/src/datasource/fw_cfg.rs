//! QEMU's fw_cfg: `-fw_cfg name=opt/berth/user-data,file=...` shows up (with the
//! qemu_fw_cfg module, loaded at boot by its ACPI modalias) as
//! `/sys/firmware/qemu_fw_cfg/by_name/opt/berth/user-data/raw`.

use std::path::Path;

use super::{DatasourceError, Fetched};

pub const ITEM: &str = "opt/berth/user-data";

pub fn read(by_name: &Path) -> Result<Option<Fetched>, DatasourceError> {
    let raw = by_name.join(ITEM).join("raw");
    if !raw.exists() {
        return Ok(None);
    }
    let user_data = super::read_bounded(&raw)?;
    Ok(Some(Fetched {
        source: format!("QEMU fw_cfg {ITEM}"),
        user_data: Some(user_data),
        ..Fetched::default()
    }))
}
