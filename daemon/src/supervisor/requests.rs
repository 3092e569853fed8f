//! The API's changes (`berthctl run`, start, stop, restart, rm, reload), each answered
//! with a typed `ApiError` when refused.

use std::time::Instant;

use berth_control::ApiError;

use crate::api::Request;
use crate::declaration::{Declaration, Restart};

use super::{say, Container, State, Supervisor};

impl Supervisor {
    /// One change from the API.
    pub(super) fn handle(&mut self, request: Request) {
        let (reply, result) = match request {
            Request::Run {
                name,
                declaration,
                reply,
            } => (reply, self.run_declared(&name, &declaration)),
            Request::Start(name, reply) => (reply, self.start_request(&name)),
            Request::Stop(name, reply) => (reply, self.stop_request(&name)),
            Request::Restart(name, reply) => {
                let r = self.known(&name).map(|_| ());
                if r.is_ok() {
                    self.stop_containers(std::slice::from_ref(&name));
                }
                (reply, r.and_then(|()| self.start_request(&name)))
            }
            Request::Remove { name, force, reply } => (reply, self.remove_request(&name, force)),
            Request::Reload(reply) => {
                self.reload();
                (reply, Ok(()))
            }
            Request::DebugCreate {
                name,
                image,
                who,
                client,
                reply,
            } => (reply, self.debug_create(&name, &image, &who, client)),
            Request::DebugRemove(name, reply) => (reply, self.debug_remove(&name)),
        };
        self.write_status();
        let _ = reply.send(result);
    }

    fn known(&self, name: &str) -> Result<&Container, ApiError> {
        self.containers
            .get(name)
            .ok_or_else(|| ApiError::NotFound(format!("no container named {name:?}")))
    }

    /// `berthctl run`: a declaration kept under /var/lib/berth, started at once.
    fn run_declared(&mut self, name: &str, text: &str) -> Result<(), ApiError> {
        if let Ok(c) = self.known(name) {
            return Err(ApiError::AlreadyExists(format!(
                "a container named {name:?} already exists (declared in {})",
                c.source.display()
            )));
        }
        let path = self.paths.api_declarations.join(format!("{name}.toml"));
        let decl =
            Declaration::parse(name, text, &path).map_err(|e| ApiError::Invalid(e.to_string()))?;
        std::fs::create_dir_all(&self.paths.api_declarations).map_err(|e| {
            ApiError::Failed(format!("{}: {e}", self.paths.api_declarations.display()))
        })?;
        // 0600: a declaration may carry secrets in its environment.
        berth_persist::write_file(&path, text.as_bytes(), 0o600)
            .map_err(|e| ApiError::Failed(e.to_string()))?;
        say(&format!("{name}: declared through the API"));
        crate::record(
            berth_control::Event::new("container", "create", name).with("image", &decl.image),
        );
        self.containers
            .insert(name.to_string(), Container::new(decl, path));
        Ok(())
    }

    fn start_request(&mut self, name: &str) -> Result<(), ApiError> {
        self.known(name)?;
        if self.stopped_forever.remove(name) {
            self.save_stopped_forever();
        }
        let Some(c) = self.containers.get_mut(name) else {
            return Ok(());
        };
        c.stopped = false;
        if c.pid().is_none() {
            c.tally.reset_backoff();
            c.state = State::Waiting(Instant::now());
        }
        Ok(())
    }

    fn stop_request(&mut self, name: &str) -> Result<(), ApiError> {
        let c = self.known(name)?;
        if c.decl.restart == Restart::UnlessStopped && self.stopped_forever.insert(name.into()) {
            self.save_stopped_forever();
        }
        self.stop_containers(&[name.to_string()]);
        if let Some(c) = self.containers.get_mut(name) {
            c.stopped = true;
            c.state = State::Stopped;
        }
        Ok(())
    }

    fn remove_request(&mut self, name: &str, force: bool) -> Result<(), ApiError> {
        let c = self.known(name)?;
        if !c.source.starts_with(&self.paths.api_declarations) {
            return Err(ApiError::Busy(format!(
                "{name:?} is declared by {}: remove that file (the daemon then removes the container)",
                c.source.display()
            )));
        }
        if c.pid().is_some() && !force {
            return Err(ApiError::Busy(format!(
                "container {name:?} is running: stop it first, or remove it with -f"
            )));
        }
        let source = c.source.clone();
        self.remove_container(name);
        std::fs::remove_file(&source)
            .map_err(|e| ApiError::Failed(format!("{}: {e}", source.display())))
    }
}
