"""`wrap()` with a budget gate: the SDK's resource methods ask it before the request is built, raise
`BudgetExceeded` on a refusal or call the fallback client; a sync client uses the gate's sync face
in its own thread, an async one awaits its async face on the caller's event loop."""

from __future__ import annotations

import functools
from typing import Any

from ..admission import Admission, CallInfo
from ..errors import BudgetExceeded, ValidationError
from ..events import new_id
from .base import BadRequest, choice_count, estimate_tokens_from_json, output_limit
from .sdk_transport import ADMISSION_HEADER, ClientState, unrefused


def _call_info(rec: ClientState, kwargs: dict[str, Any], method: str) -> CallInfo:
    model = kwargs.get("model")
    model = model if isinstance(model, str) else ""
    # the SDKs' NOT_GIVEN / omit sentinels mean "not set"
    given = {k: v for k, v in kwargs.items() if type(v).__name__ not in ("NotGiven", "Omit")}
    try:
        if method == "responses":
            max_out = output_limit(given, "max_output_tokens")
            choices = 1
        else:
            max_out = output_limit(given, "max_completion_tokens", "max_tokens")
            choices = (
                choice_count(given, "n", "best_of") if method == "completions" else choice_count(given, "n")
            )
    except BadRequest as e:
        field, _, why = str(e).partition(": ")
        raise ValidationError(field, why) from None
    text = {
        k: v
        for k, v in kwargs.items()
        if k in ("messages", "input", "prompt", "system", "instructions", "tools")
    }
    attribution = {k: v for k, v in rec.attribution.items() if k != "tags"}
    return CallInfo(
        backend=rec.backend,
        protocol=rec.protocol.name,
        provider=rec.provider_of(model),
        model=model,
        est_input_tokens=estimate_tokens_from_json(text),
        max_output_tokens=max_out,
        choices=choices,
        # the tier a call asks for, as the proxy reads it from the body
        service_tier=rec.protocol.requested_tier(given),
        local=rec.local,
        streamed=kwargs.get("stream") is True or method == "stream",
        **attribution,
        tags=dict(rec.attribution.get("tags") or {}),
    )


def _refused(admission: Admission) -> BudgetExceeded:
    return BudgetExceeded(
        admission.message or admission.notice or "budget exhausted", retry_after_s=admission.retry_after_s
    )


def _with_admission(
    rec: ClientState, admission: Admission, kwargs: dict[str, Any], call: CallInfo
) -> tuple[str, dict[str, Any]]:
    key = new_id()
    rec.admissions[key] = admission
    if len(rec.calls) > 10_000:  # sync `messages.stream` managers never say when they are done
        for old in list(rec.calls)[:5_000]:
            rec.calls.pop(old, None)
    rec.calls[key] = call
    extra = dict(kwargs.get("extra_headers") or {})
    extra[ADMISSION_HEADER] = key
    return key, {**kwargs, "extra_headers": extra}


def _done(rec: ClientState, key: str) -> None:
    """The method returned or raised: no more attempts of this call."""
    rec.calls.pop(key, None)
    leftover = rec.admissions.pop(key, None)  # never sent (the SDK failed before its transport)
    if leftover is not None and rec.gate is not None and leftover.reservation_id:
        rec.gate.release_sync(leftover)


async def _done_async(rec: ClientState, key: str) -> None:
    """`_done` for the async clients: the leftover admission is released on the caller's loop."""
    rec.calls.pop(key, None)
    leftover = rec.admissions.pop(key, None)
    if leftover is not None and rec.gate is not None and leftover.reservation_id:
        await rec.gate.release(leftover)


def _no_fallback(admission: Admission) -> BudgetExceeded:
    """The refusal of a call the gate sends to a fallback when the wrapped client was given none."""
    return BudgetExceeded(
        admission.notice or admission.message or "budget exhausted", retry_after_s=admission.retry_after_s
    )


def gate_sync(rec: ClientState, original: Any, name: str, fallback: Any, path: tuple[str, ...]) -> Any:
    @functools.wraps(original)
    def method(*args: Any, **kwargs: Any) -> Any:
        call = _call_info(rec, kwargs, name)
        admission: Admission = rec.gate.admit_sync(call)
        if not admission.allowed:
            raise _refused(admission)
        if admission.fallback_backend:
            if fallback is None:
                raise _no_fallback(admission)
            rec.gate.release_sync(admission)
            if admission.fallback_model:
                kwargs = {**kwargs, "model": admission.fallback_model}
            return resolve(fallback, path)(*args, **kwargs)
        key, kwargs = _with_admission(rec, admission, kwargs, call)
        if name == "stream":  # a context manager: the request goes out on __enter__, after we return
            return original(*args, **kwargs)
        try:
            return original(*args, **kwargs)
        except Exception as e:
            raise unrefused(e) from e
        finally:
            _done(rec, key)

    return method


def gate_async(rec: ClientState, original: Any, name: str, fallback: Any, path: tuple[str, ...]) -> Any:
    @functools.wraps(original)
    async def method(*args: Any, **kwargs: Any) -> Any:
        call = _call_info(rec, kwargs, name)
        admission: Admission = await rec.gate.admit(call)
        if not admission.allowed:
            raise _refused(admission)
        if admission.fallback_backend:
            if fallback is None:
                raise _no_fallback(admission)
            await rec.gate.release(admission)
            if admission.fallback_model:
                kwargs = {**kwargs, "model": admission.fallback_model}
            return await resolve(fallback, path)(*args, **kwargs)
        key, kwargs = _with_admission(rec, admission, kwargs, call)
        try:
            return await original(*args, **kwargs)
        except Exception as e:
            raise unrefused(e) from e
        finally:
            await _done_async(rec, key)

    return method


class _GatedAsyncStream:
    """`AsyncAnthropic.messages.stream(...)` is a plain call returning an async context manager: the
    gate is asked on `async with`, inside the caller's event loop."""

    def __init__(
        self,
        rec: ClientState,
        original: Any,
        fallback: Any,
        path: tuple[str, ...],
        args: Any,
        kwargs: dict[str, Any],
    ) -> None:
        self._rec, self._original, self._fallback, self._path = rec, original, fallback, path
        self._args, self._kwargs = args, kwargs
        self._inner: Any = None

    async def __aenter__(self) -> Any:
        rec, kwargs = self._rec, self._kwargs
        call = _call_info(rec, kwargs, "stream")
        admission: Admission = await rec.gate.admit(call)
        if not admission.allowed:
            raise _refused(admission)
        if admission.fallback_backend:
            if self._fallback is None:
                raise _no_fallback(admission)
            await rec.gate.release(admission)
            if admission.fallback_model:
                kwargs = {**kwargs, "model": admission.fallback_model}
            self._inner = resolve(self._fallback, self._path)(*self._args, **kwargs)
            return await self._inner.__aenter__()
        key, kwargs = _with_admission(rec, admission, kwargs, call)
        self._inner = self._original(*self._args, **kwargs)
        try:
            return await self._inner.__aenter__()
        except Exception as e:
            raise unrefused(e) from e
        finally:
            await _done_async(rec, key)

    async def __aexit__(self, *exc: Any) -> Any:
        return await self._inner.__aexit__(*exc)


def gate_async_stream(
    rec: ClientState, original: Any, name: str, fallback: Any, path: tuple[str, ...]
) -> Any:
    @functools.wraps(original)
    def method(*args: Any, **kwargs: Any) -> Any:
        return _GatedAsyncStream(rec, original, fallback, path, args, kwargs)

    return method


def resolve(obj: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        obj = getattr(obj, part)
    return obj
