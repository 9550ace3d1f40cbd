"""`omnitutor ops assets-bucket` against moto's S3 server, and P0 test 5: an asset written
through the store reads back through its public URL after a CORS preflight."""

from __future__ import annotations

import json
from collections.abc import Iterator

import boto3
import httpx
import pytest

from commands.assets import content_hash
from commands.assetstore import IMMUTABLE, S3AssetStore, object_key
from ops.assets_bucket import CORS_RULE_ID, ensure_bucket
from ops.backup import LIFECYCLE_RULE_ID
from ops.cli import main
from tests.aws import aws_environment, moto_server

pytestmark = pytest.mark.anyio

SITE = "https://omnitutor.ai"


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def aws(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    for name, value in aws_environment(moto_endpoint).items():
        monkeypatch.setenv(name, value)
    return moto_endpoint


def test_creates_the_bucket_with_cors_and_lifecycle_then_changes_nothing(aws: str) -> None:
    s3 = boto3.client("s3")
    first = ensure_bucket(s3, "assets-a", (SITE,), "us-east-1")
    assert (first.created, first.cors_changed, first.lifecycle_changed) == (True, True, True)
    (rule,) = s3.get_bucket_cors(Bucket="assets-a")["CORSRules"]
    assert rule["ID"] == CORS_RULE_ID
    assert rule["AllowedOrigins"] == [SITE]
    assert sorted(rule["AllowedMethods"]) == ["GET", "HEAD"]
    assert "Range" in rule["AllowedHeaders"]
    assert "Content-Range" in rule["ExposeHeaders"]
    rules = s3.get_bucket_lifecycle_configuration(Bucket="assets-a")["Rules"]
    assert [r["ID"] for r in rules] == [LIFECYCLE_RULE_ID]
    again = ensure_bucket(s3, "assets-a", (SITE,), "us-east-1")
    assert (again.created, again.cors_changed, again.lifecycle_changed) == (False, False, False)
    assert ensure_bucket(s3, "assets-a", (SITE,), "us-east-1", check=True).problems == ()


def test_check_reports_and_changes_nothing(aws: str) -> None:
    s3 = boto3.client("s3")
    missing = ensure_bucket(s3, "assets-b", (SITE,), "us-east-1", check=True)
    assert missing.problems == ("bucket assets-b does not exist",)
    s3.create_bucket(Bucket="assets-b")
    report = ensure_bucket(s3, "assets-b", (SITE,), "us-east-1", check=True)
    assert len(report.problems) == 2
    with pytest.raises(s3.exceptions.ClientError):
        s3.get_bucket_cors(Bucket="assets-b")
    # Another origin list is a difference too.
    ensure_bucket(s3, "assets-b", (SITE,), "us-east-1")
    other = ensure_bucket(s3, "assets-b", ("https://beta.omnitutor.ai",), "us-east-1", check=True)
    assert len(other.problems) == 1


def test_the_cli_sets_up_and_checks(aws: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ops", "assets-bucket", "--bucket", "assets-c", "--check"]) == 1
    assert main(["ops", "assets-bucket", "--bucket", "assets-c", "--origin", SITE]) == 0
    assert "created, CORS set, lifecycle rule set" in capsys.readouterr().err
    assert main(["ops", "assets-bucket", "--bucket", "assets-c", "--origin", SITE, "--check"]) == 0
    assert "as it should be" in capsys.readouterr().err


async def test_an_asset_reads_back_through_its_public_url_with_cors(aws: str) -> None:
    s3 = boto3.client("s3")
    ensure_bucket(s3, "assets-d", (SITE,), "us-east-1")
    # Stands in for CloudFront's read grant (an origin access control): anonymous reads of
    # objects. moto checks preflights as the action s3:OptionsObject.
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": "*",
                "Action": ["s3:GetObject", "s3:OptionsObject"],
                "Resource": "arn:aws:s3:::assets-d/*",
            }
        ],
    }
    s3.put_bucket_policy(Bucket="assets-d", Policy=json.dumps(policy))
    store = S3AssetStore("assets-d", prefix="", base_url=f"{aws}/assets-d")
    data = bytes(range(256)) * 4  # the 1 KB file of P0 test 5
    key = object_key("audio", content_hash("p0 test 5", "voice"), "mp3")
    url = await store.put(key, data, "audio/mpeg")
    async with httpx.AsyncClient() as client:
        preflight = await client.options(
            url,
            headers={
                "Origin": SITE,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "range",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == SITE
        assert "GET" in preflight.headers["access-control-allow-methods"]
        got = await client.get(url, headers={"Origin": SITE})
        assert got.status_code == 200
        assert got.content == data
        assert got.headers["access-control-allow-origin"] == SITE
        assert got.headers["content-type"] == "audio/mpeg"
        assert got.headers["cache-control"] == IMMUTABLE
        denied = await client.options(
            url, headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}
        )
        assert denied.status_code == 403  # the bucket's CORS rule names the site only
