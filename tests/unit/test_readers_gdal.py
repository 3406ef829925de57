"""GDAL settings for s3:// come from one place (readers.gdal_s3_options), also with a mounted Secret."""

import pytest

from earthops_runtime.data.readers import gdal_s3_options

pytestmark = pytest.mark.unit


def test_gdal_settings_from_the_environment_and_from_a_mounted_secret(tmp_path):
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
    options, secret = gdal_s3_options(env)
    assert options == {"AWS_S3_ENDPOINT": "127.0.0.1:9000", "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "FALSE"}
    assert secret == {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
    assert "AWS_S3_ENDPOINT" not in gdal_s3_options({**env, "AWS_S3_ENDPOINT": "elsewhere:1"})[0]  # set: left alone
    mounted = tmp_path / "secret"
    mounted.mkdir()
    (mounted / "AWS_ACCESS_KEY_ID").write_text("mounted-key\n")
    (mounted / "AWS_SECRET_ACCESS_KEY").write_text("mounted-secret")
    (mounted / "AWS_ENDPOINT_URL").write_text("https://s3.example.org")
    options, secret = gdal_s3_options({"EARTHOPS_STORE_CREDENTIALS_DIR": str(mounted)})
    assert options == {"AWS_S3_ENDPOINT": "s3.example.org", "AWS_HTTPS": "YES", "AWS_VIRTUAL_HOSTING": "FALSE"}
    assert secret == {"AWS_ACCESS_KEY_ID": "mounted-key", "AWS_SECRET_ACCESS_KEY": "mounted-secret"}
