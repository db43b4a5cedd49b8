"""A minimal origin web server with Range support, for trying peerdistd on one machine.

    python examples/origin.py FILE [--listen 127.0.0.1:8000]

Any real web server (nginx, Apache, IIS) does the same job: `peerdist fetch` asks the origin
only for the ranges no peer could supply, with ordinary HTTP Range requests.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from aiohttp import web


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--listen", default="127.0.0.1:8000")
    args = parser.parse_args()
    served = {"bytes": 0}

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.FileResponse(args.file)
        return response

    async def on_response(request: web.Request, response: web.StreamResponse) -> None:
        served["bytes"] += response.content_length or 0
        print(f"origin: {request.method} {request.headers.get('Range', 'all')} "
              f"-> {response.status} (total {served['bytes']} bytes)", flush=True)

    app = web.Application()
    app.router.add_get(f"/{args.file.name}", handler)
    app.on_response_prepare.append(on_response)
    host, _, port = args.listen.rpartition(":")
    web.run_app(app, host=host, port=int(port), print=lambda *_: None)


if __name__ == "__main__":
    main()
