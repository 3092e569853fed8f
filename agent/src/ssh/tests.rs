use super::*;

/// Made by `ssh-keygen -t ed25519 -C op@test`; `ssh-keygen -l` says
/// `256 SHA256:IPmkk1XTBH5MTLcyDD+SO4sH+DrwECbTyEEwM+E2Ec8 op@test (ED25519)`.
const ED25519: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFEUKdzI6b2WCWo+iCT/FMefnoKrOglxS4fywEozLIdc op@test";

#[test]
fn a_good_key_is_taken_and_fingerprinted_as_ssh_keygen_does() {
    assert_eq!(check_key(&format!("  {ED25519}\t")).unwrap(), ED25519);
    assert_eq!(
        line_fingerprint(ED25519).unwrap(),
        "SHA256:IPmkk1XTBH5MTLcyDD+SO4sH+DrwECbTyEEwM+E2Ec8"
    );
}

#[test]
fn options_other_types_and_broken_keys_are_refused() {
    let blob = ED25519.split_whitespace().nth(1).unwrap();
    for (bad, why) in [
        (
            format!("command=\"/bin/sh\" {ED25519}"),
            "not an OpenSSH public key type",
        ),
        (format!("ssh-dss {blob}"), "not an OpenSSH public key type"),
        ("ssh-ed25519".to_string(), "without its key"),
        ("ssh-ed25519 !!!".to_string(), "not base64"),
        // An Ed25519 blob under another name.
        (format!("ssh-rsa {blob}"), "is not a ssh-rsa key"),
        (format!("{ED25519}\nssh-ed25519 {blob}"), "one line"),
        (format!("{ED25519}\u{1b}[2J"), "control characters"),
        (format!("ssh-ed25519 {}", "A".repeat(MAX_KEY_LINE)), "bytes"),
        (String::new(), "empty"),
    ] {
        let e = check_key(&bad).unwrap_err();
        assert!(e.contains(why), "{bad:?}: {e}");
    }
}

#[test]
fn the_file_has_each_key_once_user_data_first_and_is_bounded() {
    let blob = ED25519.split_whitespace().nth(1).unwrap();
    let same_other_comment = format!("ssh-ed25519 {blob} someone-else");
    let (text, dropped) = authorized_keys(&[ED25519.to_string()], &[same_other_comment]);
    assert_eq!(text, format!("{ED25519}\n"));
    assert!(dropped.is_empty());
    // Distinct (if not real) keys past the bound are left out and said.
    let many: Vec<String> = (0..MAX_KEYS + 2)
        .map(|i| format!("ssh-ed25519 KEY{i}"))
        .collect();
    let (text, dropped) = authorized_keys(&[], &many);
    assert_eq!(text.lines().count(), MAX_KEYS);
    assert_eq!(dropped.len(), 2);
}

#[test]
fn metadata_lines_skip_comments_and_report_bad_keys() {
    let text = format!("# the operator's keys\n\n{ED25519}\nnot-a-key AAAA\n");
    let (good, problems) = keys_in_lines(&text, "meta-data public-keys");
    assert_eq!(good, vec![ED25519.to_string()]);
    assert_eq!(problems.len(), 1);
    assert!(
        problems[0].starts_with("meta-data public-keys: "),
        "{problems:?}"
    );
}
