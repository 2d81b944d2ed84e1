//! A model of the engine for the tests: runs the commands `engine_commands` produces on a plain
//! value, so the tests can check that the engine ends up holding the materialized value.

use std::collections::{BTreeMap, BTreeSet};

use crate::blob::Blob;
use crate::engine::{Command, View};
use crate::state::Value;

fn text(b: &Blob) -> String {
    String::from_utf8(b.0.clone()).expect("utf-8 argument")
}

/// Runs `commands` on `view` as the engine would.
pub fn run(view: &View, commands: &[Command]) -> View {
    let mut v = view.clone();
    for c in commands {
        let name = text(&c[0]);
        let args = &c[2..];
        match name.as_str() {
            "DEL" => v = View::default(),
            "SET" => {
                v.value = Some(Value::String(args[0].clone()));
                if args.get(1).map(text).as_deref() != Some("KEEPTTL") {
                    v.expire_at = None;
                }
            }
            "HSET" | "HDEL" => {
                let mut h = match v.value.take() {
                    Some(Value::Hash(h)) => h,
                    None => BTreeMap::new(),
                    other => panic!("{name} on {other:?}"),
                };
                if name == "HSET" {
                    for p in args.chunks(2) {
                        h.insert(p[0].clone(), p[1].clone());
                    }
                } else {
                    args.iter().for_each(|f| {
                        h.remove(f);
                    });
                }
                v.value = (!h.is_empty()).then_some(Value::Hash(h));
            }
            "SADD" | "SREM" => {
                let mut s = match v.value.take() {
                    Some(Value::Set(s)) => s,
                    None => BTreeSet::new(),
                    other => panic!("{name} on {other:?}"),
                };
                for m in args {
                    if name == "SADD" {
                        s.insert(m.clone());
                    } else {
                        s.remove(m);
                    }
                }
                v.value = (!s.is_empty()).then_some(Value::Set(s));
            }
            "ZADD" | "ZREM" => {
                let mut z = match v.value.take() {
                    Some(Value::Zset(z)) => z,
                    None => Vec::new(),
                    other => panic!("{name} on {other:?}"),
                };
                if name == "ZADD" {
                    for p in args.chunks(2) {
                        z.retain(|(m, _)| *m != p[1]);
                        z.push((p[1].clone(), text(&p[0]).parse().expect("score")));
                    }
                } else {
                    z.retain(|(m, _)| !args.contains(m));
                }
                z.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
                v.value = (!z.is_empty()).then_some(Value::Zset(z));
            }
            "LPUSH" | "RPUSH" | "LPOP" | "RPOP" | "LSET" => {
                let mut l = match v.value.take() {
                    Some(Value::List(l)) => l,
                    None => Vec::new(),
                    other => panic!("{name} on {other:?}"),
                };
                let n = || text(&args[0]).parse::<usize>().expect("count");
                match name.as_str() {
                    "LPUSH" => args.iter().for_each(|x| l.insert(0, x.clone())),
                    "RPUSH" => l.extend(args.iter().cloned()),
                    "LPOP" => drop(l.drain(..n())),
                    "RPOP" => l.truncate(l.len() - n()),
                    _ => l[n()] = args[1].clone(),
                }
                v.value = (!l.is_empty()).then_some(Value::List(l));
            }
            "PEXPIREAT" => v.expire_at = Some(text(&args[0]).parse().expect("deadline")),
            "PERSIST" => v.expire_at = None,
            other => panic!("unexpected command {other}"),
        }
        if v.value.is_none() {
            v.expire_at = None;
        }
    }
    v
}
