"""The lifecycle example: `si seq start - 3000 10` prints 3000 to 3009 on the output stream."""

import asyncio


async def run(context, input, initialNumber=0, length=1000):
    """Yield `length` numbers from `initialNumber` on, one a line, then end."""
    for number in range(int(initialNumber), int(initialNumber) + int(length)):
        yield f"{number}\n"
        await asyncio.sleep(0)  # let the hub pump the output between items
