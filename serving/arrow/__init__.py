"""Apache Arrow IPC stream bodies on ``POST /v1/score``, beside JSON.

A batch client sends ``Content-Type: application/vnd.apache.arrow.stream``: one column per
model feature (float64, no nulls), optionally ``transaction_id`` (string), ``event_time`` and
the time column (float64), the label and id columns (ignored). The rules are the JSON batch's
(:mod:`serving.validation`) in Arrow's terms, with the same error body.

- :mod:`serving.arrow.stream` reads the stream message by message, checking each record
  batch's row count and compression in its metadata before pyarrow decodes it;
- :mod:`serving.arrow.batch` validates the columns into the float64 matrix the model takes;
- :mod:`serving.arrow.answer` encodes the predictions as a stream and decides the answer's
  format from the request.
"""

from serving.arrow.answer import answer_in_arrow, encode_predictions
from serving.arrow.batch import column_rules, decode_arrow
from serving.arrow.stream import ARROW_STREAM

__all__ = ["ARROW_STREAM", "answer_in_arrow", "column_rules", "decode_arrow", "encode_predictions"]
