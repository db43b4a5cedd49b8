from peerdistd import errors


def test_every_api_error_has_unique_name_and_a_status() -> None:
    assert len(errors.API_ERRORS) == 11
    for name, cls in errors.API_ERRORS.items():
        assert cls.name == name
        assert 400 <= cls.status < 600


def test_range_errors_carry_offset_and_length() -> None:
    err = errors.MissingData(65536, 4096)
    assert err.to_json() == {
        "error": "MISSING_DATA",
        "message": "MISSING_DATA: offset 65536, length 4096",
        "offset": 65536,
        "length": 4096,
    }


def test_decode_error_names_offset() -> None:
    err = errors.DecodeError("truncated header", offset=7)
    assert err.offset == 7
    assert "byte 7" in str(err)
    assert isinstance(err, ValueError)
