"""``convolab bench``: run a layer suite through algorithms and peers."""


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmark algorithms and peers on a layer suite")
    p.set_defaults(func=lambda args: 0)
