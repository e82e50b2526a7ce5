"""The token-refresh loop: every account's refresh ahead of expiry, and a pair not yet written
to the config file written again (docs/durability.md), once a minute."""

from __future__ import annotations

import asyncio

from cwhook.trakt.accounts import Accounts

TOKEN_SAVE_RETRY = 60.0


class RefreshLoop:
    def __init__(self, accounts: Accounts, every: float = TOKEN_SAVE_RETRY) -> None:
        self.accounts = accounts
        self.every = every

    async def run(self) -> None:
        while True:
            await self.accounts.refresh()
            await asyncio.sleep(self.every)
