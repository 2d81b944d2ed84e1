//! A `SOCK_SEQPACKET` Unix socket carrying [`Message`]s and file descriptors between the old
//! and the new daemon.
//!
//! Each message is JSON, cut into frames of at most [`MAX_FRAME`] bytes (a frame's first byte
//! says whether more follow), so a large cluster state passes too; the descriptors ride on the
//! first frame. Received descriptors are close-on-exec: engines the new daemon starts never
//! inherit a listener or a client socket.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::Message;

/// Largest frame: well under the default socket buffer, so one frame is one datagram.
const MAX_FRAME: usize = 60 * 1024;
/// Most descriptors one message may carry (a client socket and the engine sockets of one
/// session).
pub const MAX_FDS: usize = 64;
/// First byte of a frame after which another frame of the same message follows.
const MORE: u8 = 1;
/// First byte of a message's last frame.
const LAST: u8 = 0;

/// Why the channel failed.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// A socket call failed.
    #[error("handover channel: {0}")]
    Io(#[from] std::io::Error),
    /// The other process closed the channel (it exited or was killed).
    #[error("handover channel closed: the other daemon process is gone")]
    Closed,
    /// The other process sent something this one cannot read.
    #[error("handover channel: unreadable message from the other daemon: {0}")]
    Decode(String),
    /// A message carries more descriptors than one message may.
    #[error("handover channel: {0} descriptors in one message, more than {MAX_FDS}")]
    TooManyFds(usize),
}

/// One end of the handover channel. Shared between tasks (`&self` methods): sends are
/// serialized, so the frames of two messages never interleave.
pub struct Channel {
    fd: AsyncFd<OwnedFd>,
    sending: tokio::sync::Mutex<()>,
}

impl Channel {
    /// A connected pair of channel ends, both close-on-exec (the end meant for the new process
    /// is given to it explicitly, see [`Channel::inheritable_fd`]).
    pub fn pair() -> std::io::Result<(Channel, Channel)> {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        )
        .map_err(std::io::Error::from)?;
        Ok((Channel::from_fd(a)?, Channel::from_fd(b)?))
    }

    /// A channel over an inherited socket (the new process's end, passed at exec).
    pub fn from_fd(fd: OwnedFd) -> std::io::Result<Channel> {
        set_nonblocking(&fd)?;
        Ok(Channel {
            // SAFETY: the channel owns `fd` and neither replaces nor closes it while registered.
            fd: unsafe {
                AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::WRITABLE)?
            },
            sending: tokio::sync::Mutex::new(()),
        })
    }

    /// A channel over descriptor `raw`, which this process inherited at exec.
    ///
    /// # Safety
    /// `raw` must be an open `SOCK_SEQPACKET` socket this process owns and nothing else uses.
    pub unsafe fn from_raw_fd(raw: RawFd) -> std::io::Result<Channel> {
        Channel::from_fd(OwnedFd::from_raw_fd(raw))
    }

    /// The descriptor of this end, to hand to a child process (which must `dup2` it to a known
    /// number: `dup2` clears close-on-exec on the copy).
    pub fn inheritable_fd(&self) -> BorrowedFd<'_> {
        self.fd.get_ref().as_fd()
    }

    /// Sends `message` with `fds` (which stay open here; close them when they are no longer
    /// this process's to use).
    pub async fn send(
        &self,
        message: &Message,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), ChannelError> {
        if fds.len() > MAX_FDS {
            return Err(ChannelError::TooManyFds(fds.len()));
        }
        let body = serde_json::to_vec(message).map_err(|e| ChannelError::Decode(e.to_string()))?;
        let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
        let _sending = self.sending.lock().await;
        let chunks: Vec<&[u8]> = if body.is_empty() {
            vec![&[]]
        } else {
            body.chunks(MAX_FRAME).collect()
        };
        for (index, chunk) in chunks.iter().enumerate() {
            let flag = [if index + 1 < chunks.len() { MORE } else { LAST }];
            let attached: &[RawFd] = if index == 0 { &raw } else { &[] };
            self.send_frame(&flag, chunk, attached).await?;
        }
        Ok(())
    }

    async fn send_frame(
        &self,
        flag: &[u8; 1],
        chunk: &[u8],
        fds: &[RawFd],
    ) -> Result<(), ChannelError> {
        loop {
            let mut guard = self.fd.writable().await?;
            let sent = guard.try_io(|fd| {
                let iov = [IoSlice::new(flag), IoSlice::new(chunk)];
                let rights = [ControlMessage::ScmRights(fds)];
                let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
                sendmsg::<()>(fd.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)
                    .map_err(std::io::Error::from)
            });
            match sent {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) if e.raw_os_error() == Some(libc_epipe()) => {
                    return Err(ChannelError::Closed)
                }
                Ok(Err(e)) => return Err(e.into()),
                Err(_would_block) => continue,
            }
        }
    }

    /// The next message and the descriptors that came with it; [`ChannelError::Closed`] when
    /// the other process closed its end.
    pub async fn recv(&self) -> Result<(Message, Vec<OwnedFd>), ChannelError> {
        let mut body = Vec::new();
        let mut fds = Vec::new();
        loop {
            let (flag, fresh) = self.recv_frame(&mut body).await?;
            fds.extend(fresh);
            if flag == LAST {
                break;
            }
        }
        let message =
            serde_json::from_slice(&body).map_err(|e| ChannelError::Decode(e.to_string()))?;
        Ok((message, fds))
    }

    /// Reads one frame, appending its data to `body`; returns its flag and descriptors.
    async fn recv_frame(&self, body: &mut Vec<u8>) -> Result<(u8, Vec<OwnedFd>), ChannelError> {
        let mut buf = vec![0u8; MAX_FRAME + 1];
        loop {
            let mut guard = self.fd.readable().await?;
            let received = guard.try_io(|fd| {
                let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
                let mut iov = [IoSliceMut::new(&mut buf)];
                let msg = recvmsg::<()>(
                    fd.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                )
                .map_err(std::io::Error::from)?;
                let truncated = msg
                    .flags
                    .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
                let mut fds = Vec::new();
                for cmsg in msg.cmsgs().map_err(std::io::Error::from)? {
                    if let ControlMessageOwned::ScmRights(raw) = cmsg {
                        // SAFETY: the kernel just installed these descriptors in this process.
                        fds.extend(
                            raw.into_iter()
                                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                        );
                    }
                }
                Ok((msg.bytes, truncated, fds))
            });
            match received {
                Ok(Ok((0, _, _))) => return Err(ChannelError::Closed),
                Ok(Ok((_, true, _))) => {
                    return Err(ChannelError::Decode("a frame was truncated".into()))
                }
                Ok(Ok((n, false, fds))) => {
                    body.extend_from_slice(&buf[1..n]);
                    return Ok((buf[0], fds));
                }
                Ok(Err(e)) if e.raw_os_error() == Some(libc_econnreset()) => {
                    return Err(ChannelError::Closed)
                }
                Ok(Err(e)) => return Err(e.into()),
                Err(_would_block) => continue,
            }
        }
    }
}

fn set_nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(std::io::Error::from)?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(flags)).map_err(std::io::Error::from)?;
    Ok(())
}

fn libc_epipe() -> i32 {
    nix::errno::Errno::EPIPE as i32
}

fn libc_econnreset() -> i32 {
    nix::errno::Errno::ECONNRESET as i32
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[tokio::test]
    async fn a_message_with_a_socket_crosses_and_the_socket_still_works() {
        let (old, new) = Channel::pair().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        let (served, _) = listener.accept().unwrap();
        let message = Message::Session {
            endpoint: addr,
            session: serde_json::json!({"id": 7}),
        };
        old.send(&message, &[served.as_fd()]).await.unwrap();
        drop(served);
        let (got, mut fds) = new.recv().await.unwrap();
        assert_eq!(got, message);
        assert_eq!(fds.len(), 1);
        let mut moved = std::net::TcpStream::from(fds.remove(0));
        client.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        moved.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping", "the passed socket is the same connection");
        let flags = nix::fcntl::fcntl(&moved, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert!(
            nix::fcntl::FdFlag::from_bits_truncate(flags).contains(nix::fcntl::FdFlag::FD_CLOEXEC),
            "received descriptors are close-on-exec"
        );
    }

    #[tokio::test]
    async fn a_large_message_crosses_in_frames_and_a_closed_peer_is_seen() {
        let (old, new) = Channel::pair().unwrap();
        let big = "x".repeat(3 * MAX_FRAME + 17);
        let message = Message::State {
            state: serde_json::json!({ "blob": big }),
        };
        let sender = tokio::spawn(async move {
            old.send(&message, &[]).await.unwrap();
            old
        });
        let (got, fds) = new.recv().await.unwrap();
        assert!(fds.is_empty());
        match got {
            Message::State { state } => {
                assert_eq!(state["blob"].as_str().unwrap().len(), big.len())
            }
            other => panic!("unexpected {other:?}"),
        }
        drop(sender.await.unwrap());
        assert!(matches!(new.recv().await, Err(ChannelError::Closed)));
    }
}
