//! Servers the self-test measures against, each in its own process so the
//! client's CPU time is the client's alone: the built-in mock, and nginx
//! answering every POST with one recorded chat stream (a server that costs
//! almost nothing, to find the client's own ceiling).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed on drop.
pub struct ServerProcess {
    pub name: String,
    pub url: String,
    pub base: String,
    child: Child,
    _dir: Option<tempfile::TempDir>,
}

impl ServerProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ServerProcess {
    /// SIGTERM first: nginx's master then stops its workers (a SIGKILLed
    /// master leaves them running); SIGKILL if it lingers.
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn wait_listening(port: u16, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!(
        "{what} did not start listening on 127.0.0.1:{port}"
    ))
}

/// `llmload mock` as a child process with these extra flags.
pub fn mock(name: &str, args: &[&str]) -> Result<ServerProcess, String> {
    let port = free_port().map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let child = Command::new(exe)
        .arg("mock")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .args(args)
        .env("LLMLOAD_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting the mock: {e}"))?;
    let mut p = ServerProcess {
        name: name.into(),
        url: format!("http://127.0.0.1:{port}/v1/chat/completions"),
        base: format!("http://127.0.0.1:{port}"),
        child,
        _dir: None,
    };
    if let Err(e) = wait_listening(port, "the mock") {
        let _ = p.child.kill();
        return Err(e);
    }
    Ok(p)
}

/// One recorded OpenAI stream with `tokens` one-token content chunks.
pub fn recorded_stream(tokens: usize) -> String {
    let head = r#"{"id":"chatcmpl-bulk","object":"chat.completion.chunk","created":1700000000,"model":"bulk","system_fingerprint":null,"choices":[{"index":0,"#;
    let mut s = String::new();
    s.push_str(&format!(
        "data: {head}\"delta\":{{\"role\":\"assistant\",\"content\":\"\"}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"
    ));
    for i in 0..tokens {
        s.push_str(&format!(
            "data: {head}\"delta\":{{\"content\":\" tok{}\"}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n",
            i % 100
        ));
    }
    s.push_str(&format!(
        "data: {head}\"delta\":{{}},\"logprobs\":null,\"finish_reason\":\"length\"}}]}}\n\n"
    ));
    s.push_str(&format!(
        "data: {{\"id\":\"chatcmpl-bulk\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"bulk\",\"choices\":[],\"usage\":{{\"prompt_tokens\":20,\"completion_tokens\":{tokens},\"total_tokens\":{}}}}}\n\n",
        tokens + 20
    ));
    s.push_str("data: [DONE]\n\n");
    s
}

pub fn nginx_path() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// nginx serving `stream{tokens}.sse` for every POST (error_page turns the
/// 405 nginx gives a POST to a static file into a 200 with its body).
pub fn nginx(tokens: usize) -> Result<ServerProcess, String> {
    let bin = nginx_path().ok_or("nginx is not installed (apt-get install nginx-light)")?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let root = dir.path();
    std::fs::create_dir_all(root.join("www")).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(root.join("body")).map_err(|e| e.to_string())?;
    let file = format!("stream{tokens}.sse");
    std::fs::write(root.join("www").join(&file), recorded_stream(tokens))
        .map_err(|e| e.to_string())?;
    let port = free_port().map_err(|e| e.to_string())?;
    let conf = format!(
        "master_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 16384; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 1000000;\n  client_body_temp_path {d}/body;\n\
           server {{\n    listen 127.0.0.1:{port};\n    root {d}/www;\n\
             location / {{\n      default_type text/event-stream;\n      error_page 405 =200 /{file};\n      try_files /{file} =404;\n    }}\n  }}\n}}\n",
        d = root.display()
    );
    write_file(&root.join("nginx.conf"), &conf)?;
    let child = Command::new(&bin)
        .arg("-c")
        .arg(root.join("nginx.conf"))
        .arg("-p")
        .arg(root)
        .arg("-g")
        .arg("daemon off;")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", bin.display()))?;
    let mut p = ServerProcess {
        name: format!("nginx {tokens}-token"),
        url: format!("http://127.0.0.1:{port}/v1/chat/completions"),
        base: format!("http://127.0.0.1:{port}"),
        child,
        _dir: Some(dir),
    };
    if let Err(e) = wait_listening(port, "nginx") {
        let _ = p.child.kill();
        return Err(e);
    }
    Ok(p)
}

fn write_file(p: &Path, s: &str) -> Result<(), String> {
    std::fs::write(p, s).map_err(|e| format!("{}: {e}", p.display()))
}
