"""Exceptions raised for values that must never reach a counter."""


class InvalidLabelError(ValueError):
    """A label value (outcome, status or currency) is outside its fixed set."""


class InvalidAmountError(ValueError):
    """An amount in minor currency units cannot be added to a counter."""


class MultiprocessError(ValueError):
    """prometheus_client's multiprocess mode cannot keep the counts exact as configured."""
