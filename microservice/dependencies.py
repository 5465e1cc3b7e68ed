"""FastAPI dependencies: the settings, the clients and the stores built from them.

Tests override `get_settings` and `get_aws` (`app.dependency_overrides`); everything
else is derived from those two.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from microprocess.ledger import Ledger
from microservice.aws import AwsClients, get_aws
from microservice.companies import CompanyStore
from microservice.settings import Settings, get_settings

SettingsDep = Annotated[Settings, Depends(get_settings)]
AwsDep = Annotated[AwsClients, Depends(get_aws)]


def get_company_store(settings: SettingsDep, aws: AwsDep) -> CompanyStore:
    return CompanyStore(aws.dynamodb, settings.companies_table)


def get_ledger(settings: SettingsDep, aws: AwsDep) -> Ledger:
    return aws.ledger(settings.ledger_table)


CompanyStoreDep = Annotated[CompanyStore, Depends(get_company_store)]
LedgerDep = Annotated[Ledger, Depends(get_ledger)]
