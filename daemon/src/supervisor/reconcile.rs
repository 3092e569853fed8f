//! Reconciliation of declarations: the operator's directory (`/etc/berth/containers.d`)
//! and the API's are read, at the daemon's start and whenever they change, and the
//! containers made to match: new ones start, changed ones are recreated (with a new
//! rootfs when the image changed), and those whose file is gone are stopped and
//! removed. `merge` and `plan` are the pure parts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::declaration::{Declaration, Restart};

use super::{remove_rootfs, say, Container, State, Supervisor};

/// Declarations by name, each with its file.
pub(super) type Declared = BTreeMap<String, (Declaration, PathBuf)>;

/// Every declaration read from each directory, in order: the first directory to declare
/// a name wins it. Returns them and a complaint for each one skipped.
pub(super) fn merge(dirs: Vec<(&Path, Vec<Declaration>)>) -> (Declared, Vec<String>) {
    let mut out = Declared::new();
    let mut skipped = Vec::new();
    for (dir, decls) in dirs {
        for d in decls {
            let source = dir.join(format!("{}.toml", d.name));
            if let Some((_, first)) = out.get(&d.name) {
                skipped.push(format!(
                    "skipped: {}: {} already declares {:?}",
                    source.display(),
                    first.display(),
                    d.name
                ));
                continue;
            }
            out.insert(d.name.clone(), (d, source));
        }
    }
    (out, skipped)
}

/// What the daemon has of a container when the declarations are read again.
pub(super) struct Known<'a> {
    pub decl: &'a Declaration,
    /// Its declaration's file is still there (maybe no longer parsing).
    pub file_exists: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Action {
    /// Its file is gone: stop and remove the container.
    Remove(String),
    /// Newly declared: start it.
    Add(Declaration, PathBuf),
    /// Declared as before (its file may have moved): keep it, note the file.
    Keep(String, PathBuf),
    /// Its declaration changed: stop it and start it again from the new one.
    Recreate {
        decl: Declaration,
        source: PathBuf,
        image_changed: bool,
    },
}

/// The actions that take the `known` containers to the `declared` ones: the removals
/// first, then the rest by name. A container whose file is still there but no longer
/// parses (so is not in `declared`) is left as it was.
pub(super) fn plan(known: &BTreeMap<&str, Known<'_>>, declared: Declared) -> Vec<Action> {
    let mut actions: Vec<Action> = known
        .iter()
        .filter(|(n, k)| !declared.contains_key(**n) && !k.file_exists)
        .map(|(n, _)| Action::Remove(n.to_string()))
        .collect();
    for (name, (decl, source)) in declared {
        let action = match known.get(name.as_str()) {
            None => Action::Add(decl, source),
            Some(k) if *k.decl == decl => Action::Keep(name, source),
            Some(k) => Action::Recreate {
                image_changed: k.decl.image != decl.image,
                decl,
                source,
            },
        };
        actions.push(action);
    }
    actions
}

/// Whether a declared container starts stopped: an operator stopped it for good
/// (`unless-stopped`, remembered across reboots).
fn stopped_for_good(decl: &Declaration, stopped_forever: &BTreeSet<String>) -> bool {
    decl.restart == Restart::UnlessStopped && stopped_forever.contains(&decl.name)
}

impl Supervisor {
    /// Every declaration, from the operator's directory and the API's (the operator's
    /// wins a name both declare); problems are reported and the rest goes on.
    fn read_declarations(&self) -> Declared {
        let mut dirs = Vec::new();
        for dir in [&self.paths.declarations, &self.paths.api_declarations] {
            let (decls, errors) = crate::declaration::load_dir(dir);
            for e in errors {
                say(&format!("skipped: {e}"));
            }
            dirs.push((dir.as_path(), decls));
        }
        let (declared, skipped) = merge(dirs);
        for s in skipped {
            say(&s);
        }
        declared
    }

    /// Reads the declarations (the daemon's start).
    pub fn load(&mut self) {
        for (name, (decl, source)) in self.read_declarations() {
            let mut c = Container::new(decl, source);
            if stopped_for_good(&c.decl, &self.stopped_forever) {
                c.stopped = true;
                c.state = State::Stopped;
            }
            self.containers.insert(name, c);
        }
    }

    /// Reads the declarations again and acts on what changed (see `plan`).
    pub(super) fn reload(&mut self) {
        let declared = self.read_declarations();
        let known: BTreeMap<&str, Known<'_>> = self
            .containers
            .iter()
            .map(|(n, c)| {
                let k = Known {
                    decl: &c.decl,
                    file_exists: c.source.exists(),
                };
                (n.as_str(), k)
            })
            .collect();
        for action in plan(&known, declared) {
            match action {
                Action::Remove(name) => {
                    say(&format!(
                        "{name}: declaration removed; removing the container"
                    ));
                    self.remove_container(&name);
                }
                Action::Add(decl, source) => {
                    say(&format!("{}: declared", decl.name));
                    crate::record(
                        berth_control::Event::new("container", "create", &decl.name)
                            .with("image", &decl.image),
                    );
                    self.containers
                        .insert(decl.name.clone(), Container::new(decl, source));
                }
                Action::Keep(name, source) => {
                    if let Some(c) = self.containers.get_mut(&name) {
                        c.source = source;
                    }
                }
                Action::Recreate {
                    decl,
                    source,
                    image_changed,
                } => self.recreate(decl, source, image_changed),
            }
        }
    }

    /// A container whose declaration changed: stopped, its network and (when the image
    /// changed) rootfs dropped, and started again from `decl`, unless an operator
    /// stopped it.
    fn recreate(&mut self, decl: Declaration, source: PathBuf, image_changed: bool) {
        let name = decl.name.clone();
        say(&format!(
            "{name}: declaration changed; recreating the container"
        ));
        if let Some(c) = self.containers.get_mut(&name) {
            c.source = source;
        }
        self.stop_containers(std::slice::from_ref(&name));
        if let Ok(b) = self.bridge.as_mut() {
            b.detach(&name); // its network may have changed: made again at start
        }
        if image_changed {
            if let Err(e) = remove_rootfs(&self.paths, &name) {
                say(&format!("{name}: removing its old rootfs: {e}"));
            }
        }
        if let Some(c) = self.containers.get_mut(&name) {
            c.decl = decl;
            c.tally.reset_backoff();
            c.state = if c.stopped {
                State::Stopped
            } else {
                State::Waiting(Instant::now())
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decl(name: &str, extra: &str) -> Declaration {
        let text = format!("image = \"alpine\"\n{extra}");
        Declaration::parse(name, &text, Path::new(&format!("{name}.toml"))).unwrap()
    }

    fn declared(list: &[(&Declaration, &str)]) -> Declared {
        list.iter()
            .map(|(d, p)| (d.name.clone(), ((*d).clone(), PathBuf::from(p))))
            .collect()
    }

    fn known<'a>(list: &[(&'a Declaration, bool)]) -> BTreeMap<&'a str, Known<'a>> {
        list.iter()
            .map(|(d, file_exists)| {
                let k = Known {
                    decl: d,
                    file_exists: *file_exists,
                };
                (d.name.as_str(), k)
            })
            .collect()
    }

    #[test]
    fn a_new_declaration_is_added_and_an_unchanged_one_kept() {
        let web = decl("web", "");
        let db = decl("db", "");
        let actions = plan(
            &known(&[(&web, true)]),
            declared(&[(&web, "/etc/web.toml"), (&db, "/etc/db.toml")]),
        );
        assert_eq!(
            actions,
            [
                Action::Add(db.clone(), "/etc/db.toml".into()),
                Action::Keep("web".into(), "/etc/web.toml".into()),
            ]
        );
    }

    #[test]
    fn a_changed_declaration_is_recreated_noting_an_image_change() {
        let web = decl("web", "");
        let web_env = decl("web", "env = { A = \"1\" }");
        let web_image = Declaration {
            image: "debian".into(),
            ..web.clone()
        };
        let recreate = |d: &Declaration, image_changed| Action::Recreate {
            decl: d.clone(),
            source: "/etc/web.toml".into(),
            image_changed,
        };
        let actions = plan(
            &known(&[(&web, true)]),
            declared(&[(&web_env, "/etc/web.toml")]),
        );
        assert_eq!(actions, [recreate(&web_env, false)]);
        let actions = plan(
            &known(&[(&web, true)]),
            declared(&[(&web_image, "/etc/web.toml")]),
        );
        assert_eq!(actions, [recreate(&web_image, true)]);
    }

    #[test]
    fn a_removed_file_removes_the_container_first() {
        let web = decl("web", "");
        let db = decl("db", "");
        let new = decl("new", "");
        let actions = plan(
            &known(&[(&web, false), (&db, true)]),
            declared(&[(&db, "/etc/db.toml"), (&new, "/etc/new.toml")]),
        );
        assert_eq!(
            actions,
            [
                Action::Remove("web".into()),
                Action::Keep("db".into(), "/etc/db.toml".into()),
                Action::Add(new.clone(), "/etc/new.toml".into()),
            ]
        );
    }

    #[test]
    fn a_file_that_no_longer_parses_leaves_its_container_alone() {
        let web = decl("web", "");
        assert_eq!(plan(&known(&[(&web, true)]), Declared::new()), []);
    }

    #[test]
    fn a_declaration_moved_to_the_other_directory_is_kept_with_its_new_file() {
        let web = decl("web", "");
        // Its old file is gone, but the name is declared elsewhere: not removed.
        let actions = plan(
            &known(&[(&web, false)]),
            declared(&[(&web, "/var/lib/berth/containers/web.toml")]),
        );
        assert_eq!(
            actions,
            [Action::Keep(
                "web".into(),
                "/var/lib/berth/containers/web.toml".into()
            )]
        );
    }

    #[test]
    fn the_first_directory_wins_a_name_both_declare() {
        let ops = decl("web", "");
        let api = decl("web", "env = { FROM = \"api\" }");
        let db = decl("db", "");
        let (out, skipped) = merge(vec![
            (Path::new("/etc/berth/containers.d"), vec![ops.clone()]),
            (Path::new("/var/lib/berth/api"), vec![api, db.clone()]),
        ]);
        assert_eq!(out.len(), 2);
        assert_eq!(out["web"].0, ops);
        assert_eq!(
            out["web"].1,
            PathBuf::from("/etc/berth/containers.d/web.toml")
        );
        assert_eq!(out["db"].1, PathBuf::from("/var/lib/berth/api/db.toml"));
        assert_eq!(
            skipped,
            ["skipped: /var/lib/berth/api/web.toml: /etc/berth/containers.d/web.toml already declares \"web\""]
        );
    }

    #[test]
    fn only_unless_stopped_stays_stopped_for_good() {
        let stopped: BTreeSet<String> = ["web".to_string()].into();
        let unless = decl("web", "restart = \"unless-stopped\"");
        let always = decl("web", "restart = \"always\"");
        let other = decl("db", "restart = \"unless-stopped\"");
        assert!(stopped_for_good(&unless, &stopped));
        assert!(!stopped_for_good(&always, &stopped));
        assert!(!stopped_for_good(&other, &stopped));
    }
}
