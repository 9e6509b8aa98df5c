#!/usr/bin/env python3
"""Write a container image archive from staged root-filesystem directories.

Used by scripts/image; needs nothing but Python's standard library.

    oci_archive.py --out IMAGE.tar --tag NAME:TAG [--tag ...] --config CONFIG.json \
        --mtime EPOCH --layer DIR [--layer DIR ...] [--layer-comment TEXT ...]

Each --layer DIR becomes one uncompressed layer holding DIR's contents as the
image's root. Owners, modes and times are normalised so that the same inputs
give the same bytes whatever the umask or the user that staged them: owner
0:0, directories 0755, files 0755 if executable else 0644, every timestamp
--mtime; DIR's sibling file DIR.meta overrides a path's owner and mode
("path uid gid [octal-mode]" per line, e.g. "tmp 0 0 1777"). CONFIG.json
carries the image's runtime settings (User, Entrypoint, Cmd, ExposedPorts,
Env, Labels, ...); architecture, rootfs and history are filled in here.
Prints the manifest's digest.

The archive is both layouts at once, the way `docker save` (25+) writes it:
an OCI image layout (oci-layout, index.json, blobs/sha256/...) for
`ctr images import` and `podman load`, and manifest.json naming the same
blobs for `docker load` and older loaders.
"""

import argparse
import datetime
import hashlib
import io
import json
import os
import stat
import sys
import tarfile

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"


def read_meta(layer_dir):
    meta = {}
    path = layer_dir.rstrip("/") + ".meta"
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                parts = line.split()
                if parts:
                    mode = int(parts[3], 8) if len(parts) > 3 else None
                    meta[parts[0].strip("/")] = (int(parts[1]), int(parts[2]), mode)
    return meta


def layer_tar(layer_dir, mtime):
    """The layer as tar bytes: sorted entries, fixed owners and times."""
    meta = read_meta(layer_dir)
    buf = io.BytesIO()
    # GNU format keeps long names portable for every loader; PAX headers
    # would carry atime/ctime that break reproducibility.
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        entries = []
        for root, dirs, files in os.walk(layer_dir):
            dirs.sort()
            for name in dirs + sorted(files):
                full = os.path.join(root, name)
                entries.append(os.path.relpath(full, layer_dir))
        for rel in sorted(entries):
            full = os.path.join(layer_dir, rel)
            st = os.lstat(full)
            info = tarfile.TarInfo(rel)
            info.mtime = mtime
            if stat.S_ISDIR(st.st_mode):
                info.mode = 0o755
            elif stat.S_ISLNK(st.st_mode):
                info.mode = 0o777
            else:
                info.mode = 0o755 if st.st_mode & 0o111 else 0o644
            info.uid, info.gid, mode = meta.get(rel, (0, 0, None))
            if mode is not None:
                info.mode = mode
            info.uname = info.gname = ""
            if stat.S_ISLNK(st.st_mode):
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(full)
                tar.addfile(info)
            elif stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                info.size = st.st_size
                with open(full, "rb") as f:
                    tar.addfile(info, f)
            else:
                sys.exit(f"oci_archive: unsupported file type: {full}")
    return buf.getvalue()


def digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def full_reference(tag):
    """The name containerd and Docker give a short reference like name:tag."""
    name = tag.rsplit(":", 1)[0]
    first = name.split("/", 1)[0]
    if "/" not in name:
        return "docker.io/library/" + tag
    if "." not in first and ":" not in first and first != "localhost":
        return "docker.io/" + tag
    return tag


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--tag", action="append", required=True)
    p.add_argument("--config", required=True, help="JSON file: the image config's `config` object")
    p.add_argument("--mtime", type=int, required=True)
    p.add_argument("--layer", action="append", required=True)
    p.add_argument("--layer-comment", action="append", default=[])
    p.add_argument("--arch", default="amd64")
    args = p.parse_args()

    created = datetime.datetime.fromtimestamp(args.mtime, datetime.timezone.utc)
    created = created.strftime("%Y-%m-%dT%H:%M:%SZ")
    with open(args.config) as f:
        runtime_config = json.load(f)

    blobs = {}  # digest -> bytes, in insertion order

    def add_blob(data):
        d = digest(data)
        blobs[d] = data
        return {"digest": d, "size": len(data)}

    layers, history = [], []
    for i, layer_dir in enumerate(args.layer):
        data = layer_tar(layer_dir, args.mtime)
        layers.append(dict(mediaType=MEDIA_LAYER, **add_blob(data)))
        comment = args.layer_comment[i] if i < len(args.layer_comment) else os.path.basename(layer_dir)
        history.append({"created": created, "created_by": "scripts/image", "comment": comment})

    config = {
        "created": created,
        "architecture": args.arch,
        "os": "linux",
        "config": runtime_config,
        # Layers are uncompressed, so a layer's digest is also its diff ID.
        "rootfs": {"type": "layers", "diff_ids": [l["digest"] for l in layers]},
        "history": history,
    }
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_desc = dict(mediaType=MEDIA_CONFIG, **add_blob(config_bytes))

    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": config_desc,
        "layers": layers,
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    manifest_desc = dict(mediaType=MEDIA_MANIFEST, **add_blob(manifest_bytes))

    # One index entry per tag: containerd names images from
    # io.containerd.image.name, other OCI tools from ref.name.
    index = {
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [
            dict(
                manifest_desc,
                annotations={
                    "io.containerd.image.name": full_reference(tag),
                    "org.opencontainers.image.ref.name": tag.rsplit(":", 1)[1],
                },
                platform={"architecture": args.arch, "os": "linux"},
            )
            for tag in args.tag
        ],
    }
    blob_path = lambda d: "blobs/sha256/" + d.split(":", 1)[1]
    docker_manifest = [
        {
            "Config": blob_path(config_desc["digest"]),
            "RepoTags": args.tag,
            "Layers": [blob_path(l["digest"]) for l in layers],
        }
    ]

    def add_file(tar, name, data, mode=0o644):
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), args.mtime, mode
        tar.addfile(info, io.BytesIO(data))

    def add_dir(tar, name):
        info = tarfile.TarInfo(name)
        info.type, info.mtime, info.mode = tarfile.DIRTYPE, args.mtime, 0o755
        tar.addfile(info)

    tmp = args.out + ".partial"
    with tarfile.open(tmp, mode="w", format=tarfile.GNU_FORMAT) as tar:
        add_dir(tar, "blobs")
        add_dir(tar, "blobs/sha256")
        for d, data in blobs.items():
            add_file(tar, blob_path(d), data)
        add_file(tar, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        add_file(tar, "index.json", json.dumps(index, sort_keys=True).encode())
        add_file(tar, "manifest.json", json.dumps(docker_manifest).encode())
    os.replace(tmp, args.out)
    print(manifest_desc["digest"])


if __name__ == "__main__":
    main()
