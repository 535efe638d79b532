//! A typed WebSocket client for tests: send frames, wait for the frames you expect
//! (others are kept for later), read close codes.

use std::collections::VecDeque;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for a frame it expects before failing.
pub const PATIENCE: Duration = Duration::from_secs(15);

pub struct WsClient {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    backlog: VecDeque<Value>,
    pub hello: Value,
    next_id: u64,
}

/// What ended a socket.
#[derive(Debug, PartialEq)]
pub enum Ended {
    Closed(Option<u16>),
    Dropped,
}

impl WsClient {
    pub async fn connect(url: &str, token: &str) -> WsClient {
        let mut request = url.into_client_request().unwrap();
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let (socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("the WebSocket upgrade succeeds");
        let mut client = WsClient {
            socket,
            backlog: VecDeque::new(),
            hello: Value::Null,
            next_id: 0,
        };
        client.hello = client.expect(|f| f["type"] == "hello").await;
        client
    }

    pub async fn send_json(&mut self, frame: Value) {
        self.socket
            .send(Message::Text(frame.to_string().into()))
            .await
            .unwrap();
    }

    /// Sends, ignoring a socket the server has already closed.
    pub async fn try_send_json(&mut self, frame: Value) {
        let _ = self
            .socket
            .send(Message::Text(frame.to_string().into()))
            .await;
    }

    pub async fn send_raw(&mut self, message: Message) {
        self.socket.send(message).await.unwrap();
    }

    /// The next frame from the server (skipping transport pings), or None when closed.
    async fn read(&mut self) -> Option<Value> {
        loop {
            match tokio::time::timeout(PATIENCE, self.socket.next()).await {
                Err(_) => panic!("no frame within {PATIENCE:?}; {}", self.describe_backlog()),
                Ok(None) | Ok(Some(Err(_))) => return None,
                Ok(Some(Ok(Message::Text(text)))) => {
                    return Some(serde_json::from_str(&text).expect("server frames are JSON"));
                }
                Ok(Some(Ok(Message::Close(_)))) => return None,
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// Waits for the first frame matching `want`; frames before it stay in the backlog.
    pub async fn expect(&mut self, want: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.backlog.iter().position(&want) {
            return self.backlog.remove(i).unwrap();
        }
        loop {
            let frame = self
                .read()
                .await
                .unwrap_or_else(|| panic!("socket closed; {}", self.describe_backlog()));
            if want(&frame) {
                return frame;
            }
            self.backlog.push_back(frame);
        }
    }

    /// Like [`WsClient::expect`], but None once the socket has closed.
    pub async fn try_expect(&mut self, want: impl Fn(&Value) -> bool) -> Option<Value> {
        if let Some(i) = self.backlog.iter().position(&want) {
            return self.backlog.remove(i);
        }
        loop {
            let frame = self.read().await?;
            if want(&frame) {
                return Some(frame);
            }
            self.backlog.push_back(frame);
        }
    }

    /// Drops frames the test has no further use for.
    pub fn forget(&mut self, unwanted: impl Fn(&Value) -> bool) {
        self.backlog.retain(|f| !unwanted(f));
    }

    fn describe_backlog(&self) -> String {
        let last: Vec<&Value> = self.backlog.iter().rev().take(3).collect();
        format!("{} frames unread, the last: {last:?}", self.backlog.len())
    }

    fn id(&mut self) -> String {
        self.next_id += 1;
        format!("f{}", self.next_id)
    }

    /// Sends a text message and returns its ack (or the error frame).
    pub async fn send_text(
        &mut self,
        conversation: &str,
        client_msg_id: &str,
        text: &str,
    ) -> Value {
        let id = self.id();
        self.send_json(json!({
            "type": "send", "id": id, "conversation_id": conversation,
            "client_msg_id": client_msg_id, "kind": "text", "body": {"text": text}
        }))
        .await;
        self.reply(&id).await
    }

    /// The `ack`, `synced`, `subscribed`, `pong` or `error` answering frame `id`.
    pub async fn reply(&mut self, id: &str) -> Value {
        let id = id.to_string();
        self.expect(move |f| f["id"] == id.as_str()).await
    }

    pub async fn subscribe(&mut self, conversation: &str, after_seq: Option<i64>) -> Value {
        let id = self.id();
        let mut frame = json!({"type": "subscribe", "id": id, "conversation_id": conversation});
        if let Some(after) = after_seq {
            frame["after_seq"] = json!(after);
        }
        self.send_json(frame).await;
        self.reply(&id).await
    }

    pub async fn request(&mut self, mut frame: Value) -> Value {
        let id = self.id();
        frame["id"] = json!(id);
        self.send_json(frame).await;
        self.reply(&id).await
    }

    /// The next `message` frame of `conversation`.
    pub async fn next_message(&mut self, conversation: &str) -> Value {
        let conversation = conversation.to_string();
        self.expect(move |f| {
            f["type"] == "message" && f["message"]["conversation_id"] == conversation.as_str()
        })
        .await["message"]
            .clone()
    }

    /// Reads `count` messages of `conversation` and returns their sequence numbers.
    pub async fn message_seqs(&mut self, conversation: &str, count: usize) -> Vec<i64> {
        let mut seqs = Vec::with_capacity(count);
        for _ in 0..count {
            seqs.push(
                self.next_message(conversation).await["seq"]
                    .as_i64()
                    .unwrap(),
            );
        }
        seqs
    }

    /// Reads until the server closes the socket; returns the close code.
    pub async fn closed(&mut self) -> Ended {
        loop {
            match tokio::time::timeout(PATIENCE, self.socket.next()).await {
                Err(_) => panic!("the socket stayed open"),
                Ok(None) | Ok(Some(Err(_))) => return Ended::Dropped,
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return Ended::Closed(frame.map(|f| u16::from(f.code)));
                }
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// The bot's replies to the client message with sequence number `seq` (messages with
    /// client id `bot:<seq>:<n>`): waits up to [`PATIENCE`] for the first, then takes more
    /// until `last` says a reply ends the turn or `settle` passes without another.
    pub async fn bot_replies(
        &mut self,
        seq: i64,
        settle: Duration,
        last: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let prefix = format!("bot:{seq}:");
        let mut replies = Vec::new();
        loop {
            let wait = if replies.is_empty() { PATIENCE } else { settle };
            let want = prefix.clone();
            let next = tokio::time::timeout(
                wait,
                self.expect(move |f| {
                    f["type"] == "message"
                        && f["message"]["client_msg_id"]
                            .as_str()
                            .is_some_and(|c| c.starts_with(&want))
                }),
            )
            .await;
            match next {
                Ok(frame) => {
                    let message = frame["message"].clone();
                    let done = last(&message);
                    replies.push(message);
                    if done {
                        return replies;
                    }
                }
                Err(_) if !replies.is_empty() => return replies,
                Err(_) => panic!("the bot did not answer (no {prefix}* message)"),
            }
        }
    }

    /// True when no `message` frame of `conversation` arrives within `wait`.
    pub async fn quiet(&mut self, conversation: &str, wait: Duration) -> bool {
        if self
            .backlog
            .iter()
            .any(|f| f["type"] == "message" && f["message"]["conversation_id"] == conversation)
        {
            return false;
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Err(_) => return true,
                Ok(Some(Ok(Message::Text(text)))) => {
                    let frame: Value = serde_json::from_str(&text).unwrap();
                    if frame["type"] == "message"
                        && frame["message"]["conversation_id"] == conversation
                    {
                        self.backlog.push_back(frame);
                        return false;
                    }
                    self.backlog.push_back(frame);
                }
                Ok(Some(Ok(_))) => continue,
                Ok(_) => return true,
            }
        }
    }
}
