"""One shape for every user-facing error: which node, which input, what was wrong, how to fix it."""


class PSLDInputError(ValueError):
    """A wrong input to a PSLD node. ComfyUI shows the message; the server keeps serving."""

    def __init__(self, node_id: str, input_name: str, problem: str, fix: str):
        self.node_id, self.input_name, self.problem, self.fix = node_id, input_name, problem, fix
        super().__init__(f"{node_id}: input '{input_name}': {problem} Fix: {fix}")


def reraise_as_input_error(node_id: str, input_name: str, error: ValueError, fix: str) -> PSLDInputError:
    """Wrap a ValueError from psld/ (which names the argument) so the message also names the node and input."""
    return PSLDInputError(node_id, input_name, str(error), fix)
