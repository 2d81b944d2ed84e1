#!/usr/bin/env python3
"""Finds a database's endpoint through a Sentinel-compatible discovery service with redis-py,
exactly as a client would, and prints it as JSON: {"ip": ..., "port": ...}.

With --write, also SETs a fresh key through Sentinel(...).master_for(NAME) and GETs it back,
adding "key", "value" and "read_back" to the JSON (over TLS with --tls-ca CA). An unknown name prints {"error": ...} and
exits with status 2. Run it with the python that scripts/python-env prints.
"""

import argparse
import json
import sys
import uuid

from redis.sentinel import MasterNotFoundError, Sentinel


def host_port(text):
    """Parses HOST:PORT."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentinel", type=host_port, action="append", required=True,
                        help="a discovery service as HOST:PORT (repeatable)")
    parser.add_argument("--name", required=True, help="the database's name")
    parser.add_argument("--write", action="store_true",
                        help="also SET and GET a key through master_for(NAME)")
    parser.add_argument("--password", help="the database's password, for --write")
    parser.add_argument("--sentinel-password",
                        help="AUTH to the discovery service with this database password "
                             "(sentinel_kwargs): needed to find a database that has one")
    parser.add_argument("--tls-ca",
                        help="connect to the database with TLS, trusting this CA certificate "
                             "(the discovery service itself stays plaintext, as sentinels usually are)")
    parser.add_argument("--timeout", type=float, default=5.0, help="socket timeout, seconds")
    return parser.parse_args()


def write_through(sentinel, args):
    """SETs a fresh key through the discovered master and reads it back."""
    tls = {"ssl": True, "ssl_ca_certs": args.tls_ca} if args.tls_ca else {}
    master = sentinel.master_for(args.name, password=args.password,
                                 socket_timeout=args.timeout, decode_responses=True, **tls)
    key = f"flotilla:sentinel-check:{uuid.uuid4().hex}"
    value = uuid.uuid4().hex
    master.set(key, value)
    return {"key": key, "value": value, "read_back": master.get(key)}


def main():
    args = parse_args()
    sentinel_kwargs = {"password": args.sentinel_password} if args.sentinel_password else None
    sentinel = Sentinel(args.sentinel, socket_timeout=args.timeout,
                        sentinel_kwargs=sentinel_kwargs)
    try:
        ip, port = sentinel.discover_master(args.name)
    except MasterNotFoundError as e:
        print(json.dumps({"error": str(e)}))
        return 2
    result = {"ip": ip, "port": int(port)}
    if args.write:
        result.update(write_through(sentinel, args))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
