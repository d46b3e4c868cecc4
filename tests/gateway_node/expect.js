// Helpers the Node client programs share.
"use strict";

// The message of the error a command must fail with (throws when it succeeds).
async function error(promise) {
  try {
    await promise;
  } catch (err) {
    return err.message;
  }
  throw new Error("expected an error");
}

module.exports = { error };
