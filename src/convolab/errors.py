"""Exceptions raised by convolab.

`ConvError` is a `ValueError` for bad input: the message names the offending value.
`UnsupportedError` is raised when a *named* algorithm cannot run an otherwise valid
convolution; its message gives the reason and the algorithms that can.
"""


class ConvError(ValueError):
    """Invalid convolution input (shapes, hyper-parameters, dtypes, memory)."""


class UnsupportedError(ConvError):
    """A valid convolution that the requested algorithm cannot compute.

    Attributes
    ----------
    algorithm : str
        The algorithm that was asked for.
    reason : str
        Why it cannot run this convolution.
    alternatives : list of str
        Registered algorithms that can.
    """

    def __init__(self, algorithm: str, reason: str, alternatives: list[str]):
        self.algorithm = algorithm
        self.reason = reason
        self.alternatives = list(alternatives)
        alt = ", ".join(self.alternatives) if self.alternatives else "none"
        super().__init__(
            f"algorithm {algorithm!r} cannot run this convolution: {reason}; "
            f"algorithms that can: {alt}"
        )
