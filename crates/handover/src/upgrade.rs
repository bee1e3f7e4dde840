//! Binary upgrade without refusing a connection: a new `handover run --upgrade-from PATH` takes
//! over the listening sockets of the running one (started with `--upgrade-socket PATH`), handed
//! over the unix socket with `SCM_RIGHTS` (as HAProxy's `-x` and nginx's `USR2` do).
//!
//! 1. The new process connects and asks.
//! 2. The old one stops accepting on its control API (calls wait in the backlog, which the new
//!    process inherits), saves the state file one last time and stops writing it, then sends one
//!    message: a JSON header naming each socket, and the sockets (the control API's, then each
//!    listener's, one per data-plane worker).
//! 3. The new process starts on those sockets (the listeners it does not find there are bound as
//!    usual), restores the phases from the state file, and answers `ready`.
//! 4. The old process stops accepting and finishes its open connections (up to its
//!    `--shutdown-grace`), then exits. If the new process goes away before `ready`, the old one
//!    takes its control API and state file back and goes on as before.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage,
    SendFlags, recvmsg, sendmsg,
};
use serde::{Deserialize, Serialize};

/// Most descriptors one `SCM_RIGHTS` message carries on Linux (`SCM_MAX_FD`).
const MAX_FDS: usize = 253;
/// Longest header.
const MAX_HEADER: usize = 256 * 1024;
/// What the new process asks with.
const ASK: &[u8] = b"upgrade\n";
/// What the new process says once it serves.
pub const READY: &[u8] = b"ready\n";

/// What the sockets of a message are.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Header {
    /// The control API's configured bind (its socket is the first descriptor).
    control_bind: SocketAddr,
    /// Every listener, in the order of its descriptors.
    listeners: Vec<HeaderListener>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct HeaderListener {
    name: String,
    /// Its configured bind (what a new configuration must say to take it over).
    bind: SocketAddr,
    /// Its actual address.
    address: SocketAddr,
    /// How many descriptors (one per worker).
    sockets: usize,
}

/// Sockets taken over from the running process.
#[derive(Debug)]
pub struct Inherited {
    /// The control API's configured bind and socket.
    pub control: (SocketAddr, TcpListener),
    /// Each listener: name, configured bind, actual address, sockets.
    pub listeners: Vec<InheritedListener>,
}

/// One listener's sockets.
#[derive(Debug)]
pub struct InheritedListener {
    /// Listener name.
    pub name: String,
    /// Configured bind.
    pub bind: SocketAddr,
    /// Actual address.
    pub address: SocketAddr,
    /// One per worker of the old process.
    pub sockets: Vec<TcpListener>,
}

impl Inherited {
    /// The worker count of the old process (each listener had that many sockets).
    pub fn workers(&self) -> Option<usize> {
        self.listeners.iter().map(|l| l.sockets.len()).max()
    }

    /// Takes the sockets of the listener `name` if it is bound to `bind`.
    pub fn take(&mut self, name: &str, bind: SocketAddr) -> Option<InheritedListener> {
        let index = self
            .listeners
            .iter()
            .position(|l| l.name == name && l.bind == bind)?;
        Some(self.listeners.remove(index))
    }
}

/// New process: asks the process listening on `path` for its sockets. Returns them with the
/// connection on which to say [`READY`].
pub fn receive(path: &Path) -> anyhow::Result<(Inherited, UnixStream)> {
    let mut stream = UnixStream::connect(path)
        .with_context(|| format!("--upgrade-from {}: cannot connect", path.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.write_all(ASK)?;
    let mut data = vec![0u8; MAX_HEADER];
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = recvmsg(
        stream.as_fd(),
        &mut [IoSliceMut::new(&mut data)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .context("receiving the sockets")?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = message {
            fds.extend(rights);
        }
    }
    let mut header = data[..received.bytes].to_vec();
    // The header ends with a newline; read the rest if it came in pieces.
    while !header.ends_with(b"\n") {
        let mut more = [0u8; 4096];
        let n = stream.read(&mut more)?;
        if n == 0 || header.len() > MAX_HEADER {
            bail!(
                "the running process closed the upgrade connection before sending its sockets (is it a handover started with --upgrade-socket?)"
            );
        }
        header.extend_from_slice(&more[..n]);
    }
    let header: Header = serde_json::from_slice(&header).context("the running process's header")?;
    let expected = 1 + header.listeners.iter().map(|l| l.sockets).sum::<usize>();
    if fds.len() != expected {
        bail!(
            "expected {expected} sockets from the running process, received {}",
            fds.len()
        );
    }
    let mut fds = fds.into_iter().map(TcpListener::from);
    let control = (header.control_bind, fds.next().expect("counted"));
    let listeners = header
        .listeners
        .into_iter()
        .map(|l| InheritedListener {
            sockets: fds.by_ref().take(l.sockets).collect(),
            name: l.name,
            bind: l.bind,
            address: l.address,
        })
        .collect();
    Ok((Inherited { control, listeners }, stream))
}

/// Old process: sends the control API's socket and every listener's sockets on `stream`.
pub fn send(
    stream: &UnixStream,
    control: (SocketAddr, &TcpListener),
    listeners: &[(
        handover_core::config::ListenerConfig,
        SocketAddr,
        Vec<TcpListener>,
    )],
) -> anyhow::Result<()> {
    let header = Header {
        control_bind: control.0,
        listeners: listeners
            .iter()
            .map(|(config, address, sockets)| HeaderListener {
                name: config.name.clone(),
                bind: config.bind,
                address: *address,
                sockets: sockets.len(),
            })
            .collect(),
    };
    let mut fds = vec![control.1.as_fd()];
    for (_, _, sockets) in listeners {
        fds.extend(sockets.iter().map(|s| s.as_fd()));
    }
    if fds.len() > MAX_FDS {
        bail!(
            "{} sockets to hand over, more than one message carries ({MAX_FDS}): fewer workers or listeners",
            fds.len()
        );
    }
    let mut text = serde_json::to_vec(&header)?;
    text.push(b'\n');
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut ancillary = SendAncillaryBuffer::new(&mut space);
    if !ancillary.push(SendAncillaryMessage::ScmRights(&fds)) {
        bail!("cannot attach {} sockets to the message", fds.len());
    }
    let sent = sendmsg(
        stream.as_fd(),
        &[IoSlice::new(&text)],
        &mut ancillary,
        SendFlags::empty(),
    )
    .context("sending the sockets")?;
    let mut stream = stream;
    if sent < text.len() {
        stream.write_all(&text[sent..])?;
    }
    Ok(())
}

/// Old process: waits for the new one's [`READY`]; `false` if it went away first.
pub fn wait_ready(stream: &mut UnixStream, timeout: Duration) -> bool {
    let _ = stream.set_read_timeout(Some(timeout));
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while answer.len() < READY.len() {
        match stream.read(&mut byte) {
            Ok(1) => answer.push(byte[0]),
            _ => return false,
        }
    }
    answer == READY
}

/// Old process: reads the new one's request on an accepted connection.
pub fn read_ask(stream: &mut UnixStream) -> bool {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut ask = vec![0u8; ASK.len()];
    stream.read_exact(&mut ask).is_ok() && ask == ASK
}
